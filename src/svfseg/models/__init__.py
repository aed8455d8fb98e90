"""``svfseg.models`` was split by config group; an old import says where its names went instead of failing bare."""

raise ImportError(
    "svfseg.models was split by config group: backbones (backbone=) are svfseg.backbones, e.g. "
    "svfseg.backbones.build_backbone; few-shot methods (method=) are svfseg.methods, e.g. "
    "svfseg.methods.registry.register_model and svfseg.methods.base.FewShotModel. Replace "
    "'svfseg.models.backbones' with 'svfseg.backbones' and 'svfseg.models' with 'svfseg.methods'."
)
