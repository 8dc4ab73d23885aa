"""Files in and out of rooms: what a message carries, downloads and uploads, encryption of files
in encrypted rooms, speech (transcription and synthesis)."""
