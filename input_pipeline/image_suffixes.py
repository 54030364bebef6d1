"""The file name suffixes of images, by the decoder that has to read them.

TF-free and dependency-free, so the converter's spawned workers and every
`--help` can import it.
"""

# What TensorFlow's `decode_image` reads: what `trainer.predict` accepts,
# since the exported model decodes the bytes itself.
TF_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# What PIL reads as well: the converter decodes with PIL and stores JPEG, so
# it also takes the TIFF and WebP files a camera or a scanner may produce.
PIL_IMAGE_SUFFIXES = TF_IMAGE_SUFFIXES + (".tif", ".tiff", ".webp")
