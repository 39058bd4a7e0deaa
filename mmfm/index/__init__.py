"""A searchable photo index: CLIP image embeddings of a folder in FAISS, file metadata in SQLite,
updated incrementally (mmfm.index.build), queried by text, example image or both (mmfm.index.search)."""

from mmfm.index.store import FileRecord, Hit, PhotoIndex

__all__ = ["PhotoIndex", "FileRecord", "Hit"]
