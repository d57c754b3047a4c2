"""Models: timm backbones and the SCN head."""
