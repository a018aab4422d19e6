"""`aug-sl` and `aug-sl-kd`: Aug-SL, the seed's authors' later method. The student trains on mixed images (mixup,
CutMix or RICAP over the usual crop and flip) and the target of each mixed image is the teacher's own label of that
mixed image, not the mix of its parts' labels. The losses are sl's and sl-kd's; what differs is the pixels the
labels belong to, which `--mix` (online) or a store generated with `--views mix:POLICY:K` supplies. In aug-sl-kd
the hard part is the mix of the parts' ground truths by share (the mixing weight, or the area), as in CutMix.
"""
from .registry import register_method
from .sl import SoftLabels
from .sl_kd import SoftLabelsKD


@register_method
class AugSoftLabels(SoftLabels):
    name = "aug-sl"
    summary = "sl on mixed images: soft CE to the teacher's label of each mixed image, x T^2 (needs a mix)"
    mixes = "required"


@register_method
class AugSoftLabelsKD(SoftLabelsKD):
    name = "aug-sl-kd"
    summary = "sl-kd on mixed images: ce_weight * CE to the parts' classes by share + kd_weight * KD to the " \
              "teacher's label of the mixed image (needs a mix)"
    mixes = "required"
