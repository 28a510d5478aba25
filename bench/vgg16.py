"""The handwritten VGG16 of Places365's train_val_vgg16 (the corpus's VGG16
train_val): thirteen 3x3 convolutions in five blocks, each closed by a 2x2
max pool, then fc6/fc7 with dropout and fc8a's 365 places. Weights are
drawn from N(0, 0.01²) as the prototxt's gaussian fillers draw them, except
fc8a's, which names no filler and so gets Caffe's default, constant 0."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
PLACES = 365


class VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        convs, cin = [], 3
        for block in BLOCKS:
            for cout in block:
                convs.append(nn.Conv2d(cin, cout, 3, padding=1))
                cin = cout
        self.convs = nn.ModuleList(convs)
        self.fc6, self.fc7 = nn.Linear(512 * 7 * 7, 4096), nn.Linear(4096, 4096)
        self.fc8a = nn.Linear(4096, PLACES)
        for layer in (*self.convs, self.fc6, self.fc7):
            nn.init.normal_(layer.weight, std=0.01)
        for layer in (*self.convs, self.fc6, self.fc7, self.fc8a):
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.fc8a.weight)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        convs = iter(self.convs)
        for block in BLOCKS:
            for _ in block:
                x = F.relu(next(convs)(x), inplace=True)
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = F.dropout(F.relu(self.fc6(x.flatten(1)), inplace=True), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x), inplace=True), 0.5, self.training)
        return F.cross_entropy(self.fc8a(x), label)
