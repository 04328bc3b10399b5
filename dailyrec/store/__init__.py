"""The Redis version protocol: the key layout and record format (keys), connections (connection),
and its two halves side by side: the writer that publish and rollback use (writer) and the reader
the API uses (reader). Readers only ever see whole versions."""
