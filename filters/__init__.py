"""Text filters, image filters, quality classifier and deduplication, as build steps."""
