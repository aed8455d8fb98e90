"""The ignore label: 255 is the "void" value of Pascal VOC / COCO label PNGs, in no loss or metric."""

IGNORE_INDEX = 255
