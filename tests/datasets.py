"""The tiny datasets tests write live in cifar.sample_data (bench/ uses them too)."""

from cifar.sample_data import (  # noqa: F401
    batch_bytes, class_folder_files, image_bytes, make_archive, make_class_folders, make_python_batches,
    python_batch_files, tiny_arrays, write_archive,
)
