"""Vision: safe image loading, preprocessing matching the references, masks and drawing."""
