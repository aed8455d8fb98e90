"""Few-shot lists: which (image, label) pairs each fold and split may draw episodes from.

``selection`` builds a list from a dataset (pool classes, the novel-class filter, the pixel threshold;
cached), ``label_index`` counts the classes in every label file once, ``cache`` keeps both across runs,
``bam_format`` reads and writes the BAM/SVF list files, and ``python -m svfseg.data.lists`` is the CLI.
The DataModule uses ``selection.build_list``; nothing here imports torch.
"""
