"""The named ViT sizes, apart from the model code so that configs are checked against them before torch is
imported."""

VIT_SIZES = {
    "vit_micro": dict(embed_dim=64, depth=4, num_heads=4, patch_size=16),
    "vit_demo": dict(embed_dim=128, depth=4, num_heads=4, patch_size=8),  # the CPU demos' encoder
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}


def vit_size(name: str) -> dict:
    """Architecture of a named size; accepts 'vit_base' and the official 'vit_base_patch16' spellings."""
    key = name.split("_patch")[0]
    if key not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r}; known: {', '.join(VIT_SIZES)}")
    return dict(VIT_SIZES[key])
