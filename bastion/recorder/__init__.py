"""Session recording: asciicast v2 events in an encrypted, hash-chained, signed container."""
