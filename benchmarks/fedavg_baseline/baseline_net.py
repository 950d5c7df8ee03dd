"""The baseline's model: MedPFL's small CNN with defaults, so NVFlare's exporter can rebuild it on the server."""

from medpfl_app.models.networks import SmallCNN


class BaselineNet(SmallCNN):
    def __init__(self, in_channels: int = 1, num_classes: int = 4, image_size: int = 64) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
