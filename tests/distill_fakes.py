"""Shared by the distiller tests: a method's own loss term over a few SGD steps on real (untrained) resnet20s."""
import torch

from labelopt.models import FeatureTaps, create_model, feature_shapes
from labelopt.stages.distillers import FEATURE_PREFIX, DistillContext
from labelopt.stages.batch import ViewedBatch


def term_trace(cls, part: str, steps: int, *, teacher_train_mode: bool = False, lr: float = 0.05,
               **options) -> list[float]:
    """parts[part] at each of `steps` SGD steps (lr `lr`, momentum 0.9) of a student resnet20 and the method's
    modules against a fixed teacher resnet20's taps, on 16 fixed random images."""
    torch.manual_seed(0)
    taps = list(cls.student_taps)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    teacher_model = create_model("resnet20", 10).train(teacher_train_mode)
    with torch.no_grad(), FeatureTaps(teacher_model, "resnet20", taps) as tapped:
        teacher_model(images)
        teacher = {FEATURE_PREFIX + k: v.clone() for k, v in tapped.features.items()}
    shapes = feature_shapes("resnet20", 10, taps)
    distiller = cls(DistillContext(10, student_shapes=shapes, teacher_shapes=shapes), **options)
    model = create_model("resnet20", 10).train()
    optimizer = torch.optim.SGD([*model.parameters(), *distiller.parameters()], lr=lr, momentum=0.9)
    batch = ViewedBatch(torch.zeros(16, 3, 32, 32, dtype=torch.uint8), labels, torch.arange(16))
    terms = []
    for _ in range(steps):
        with FeatureTaps(model, "resnet20", taps) as tapped:
            logits = model(images)
        parts = distiller(logits, dict(tapped.features), teacher, batch)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        terms.append(parts[part].item())
    return terms
