"""The edge: the ASGI application (:mod:`.app`) and the server that runs it (:mod:`.server`)."""
