"""Images: references, registry client, content store, unpacking."""
