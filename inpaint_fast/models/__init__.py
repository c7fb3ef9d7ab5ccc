"""PIC and DFNet, complete networks on the fused ops.

* :mod:`inpaint_fast.models.pic` — Pluralistic Image Completion: encoder, generator with the
  short+long attention, the two discriminators, losses, pluralistic sampling, and the converter
  of the official checkpoints.
* :mod:`inpaint_fast.models.dfnet` — Deep Fusion Network: the U-Net with six fusion blocks, its
  loss (multi-scale L1, VGG16 perceptual/style, TV) and VGG16.
"""
