//! Packaging (issue 20): the image from environment variables alone, deploy/compose.yaml, restore from a backup.
