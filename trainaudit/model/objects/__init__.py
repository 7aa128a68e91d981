"""The object model: which spellings of a file name one object, what made it and what
it is (``model.py``), its kinds (``kinds.py``) and references (``refs.py``)."""

from trainaudit.model.objects.kinds import DDP_WRAPPERS, FSDP_WRAPPERS, Kind
from trainaudit.model.objects.model import FileObject, FileObjects, file_objects
from trainaudit.model.objects.refs import ObjectCall, Ref, spelling

__all__ = ["DDP_WRAPPERS", "FSDP_WRAPPERS", "FileObject", "FileObjects", "Kind", "ObjectCall", "Ref",
           "file_objects", "spelling"]
