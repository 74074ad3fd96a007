"""Getting verified events onto Kafka, and deciding when a 2xx may be given.

Along the data's path: :mod:`.delivery` decides per request (publish and wait, or spool),
with :mod:`.dedup` remembering what was accepted; :mod:`.records` is the wire form shared by
everything below; :mod:`.publish` is the listener's side of the Kafka client and
:mod:`.producer` the process that runs it; :mod:`.spool` and :mod:`.forward` keep what the
broker has not acknowledged yet; :mod:`.audit` publishes refusals.

Nothing here is imported on package import: the producer process imports only
:mod:`.records` and :mod:`.producer`, and must stay light.
"""
