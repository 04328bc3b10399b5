"""publish and the API's side of Redis: the key layout and record format (keys), connections
(connection), the writer that publish and rollback use (writer) and the reader the API uses
(reader), with publish's settings (settings). Readers only ever see whole versions."""
