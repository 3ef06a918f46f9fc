"""From an upload's URI to sampled frames: fetching under URI rules (:mod:`.fetch`), sniffing
the container (:mod:`.container`), choosing frames (:mod:`.sampling`), decoding with decord
(:mod:`.decoding`) in a sandboxed child process (:mod:`.sandbox`)."""
