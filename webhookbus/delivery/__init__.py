"""Getting verified events onto Kafka, and deciding when a 2xx may be given.

Along the data's path: :mod:`.delivery` decides per request (publish and wait, or spool),
with :mod:`.dedup` remembering what was accepted; :mod:`.records` is the wire form shared by
everything below; :mod:`.publish` is the one publishing interface, with two clients behind
it (:mod:`.options` chooses): :mod:`.confluent` (librdkafka in the listener's process) and
:mod:`.process_publisher` with :mod:`.producer` (kafka-python in a process of its own);
:mod:`.spool` and :mod:`.forward` keep what the broker has not acknowledged yet; :mod:`.audit`
publishes refusals.

Nothing here is imported on package import: the producer process imports only
:mod:`.records` and :mod:`.producer`, and must stay light.
"""
