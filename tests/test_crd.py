"""CRD: the loss against numpy, where gradients go, exact resume of the negatives, ranks in step, end to end."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import labelopt.stages.distillers as distillers
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.stages.distillers.base import DistillContext
from labelopt.stages.distillers.crd import ContrastiveRepresentation, CRDWithKD
from labelopt.stages.batch import ViewedBatch

N, B, K, D, S_DIM, T_DIM, CLASSES = 12, 4, 5, 3, 4, 5, 3
CONTEXT = DistillContext(num_classes=CLASSES, num_samples=N, student_shapes={"pool": (S_DIM,)},
                         teacher_shapes={"pool": (T_DIM,)}, train_labels=torch.arange(N) % CLASSES)


def quiet(_):
    pass


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    for cls in (ContrastiveRepresentation, CRDWithKD):
        monkeypatch.setitem(distillers.DISTILLERS, cls.name, cls)


def small_crd(cls=ContrastiveRepresentation, seed=0, **options):
    torch.manual_seed(seed)
    return cls(CONTEXT, feat_dim=D, nce_k=K, **options)


def step_inputs(indices, seed):
    """Logits, student taps, teacher signals and the batch of one step, all fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(indices)
    batch = ViewedBatch(torch.zeros(len(idx), 3, 2, 2, dtype=torch.uint8), idx % CLASSES, idx)
    teacher = {"features:pool": torch.randn(len(idx), T_DIM, generator=g),
               "logits": torch.randn(len(idx), CLASSES, generator=g)}
    return torch.randn(len(idx), CLASSES, generator=g), {"pool": torch.randn(len(idx), S_DIM, generator=g)}, \
        teacher, batch


# --- the independent numpy reference -------------------------------------------------------------------------------

def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_nce(scores, z, tau=0.07):
    """-(1/B) [sum_i log h(i, pos) + sum_i sum_k log(1 - h(i, neg_k))], h = P / (P + K / N), P = exp(s / tau) / Z."""
    p = np.exp(scores / tau) / z
    h = p / (p + (scores.shape[1] - 1) / N)
    return -(np.log(h[:, 0]).sum() + np.log(1 - h[:, 1:]).sum()) / scores.shape[0]


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def numpy_step(heads, memory, z, logits, f_s, f_t, idx, labels, contrast, momentum=0.5):
    """One CRD step in numpy: (loss, z); `memory` (student, teacher banks) is updated in place."""
    s = unit_rows(f_s @ heads["ws"].T + heads["bs"])
    t = unit_rows(f_t @ heads["wt"].T + heads["bt"])
    mem_s, mem_t = memory
    student_scores = np.einsum("bkd,bd->bk", mem_t[contrast], s)
    teacher_scores = np.einsum("bkd,bd->bk", mem_s[contrast], t)
    if z is None:
        z = (np.exp(student_scores / 0.07).mean() * N, np.exp(teacher_scores / 0.07).mean() * N)
    crd = numpy_nce(student_scores, z[0]) + numpy_nce(teacher_scores, z[1])
    loss = numpy_cross_entropy(logits, labels) + 0.8 * crd
    mem_s[idx] = unit_rows(momentum * mem_s[idx] + (1 - momentum) * s)
    mem_t[idx] = unit_rows(momentum * mem_t[idx] + (1 - momentum) * t)
    return loss, z


def test_loss_z_and_memory_update_match_numpy():
    crd = small_crd()
    rng = np.random.default_rng(5)
    heads = {"ws": rng.normal(size=(D, S_DIM)), "bs": rng.normal(size=D),
             "wt": rng.normal(size=(D, T_DIM)), "bt": rng.normal(size=D)}
    with torch.no_grad():
        crd.embed_student.weight.copy_(torch.tensor(heads["ws"]))
        crd.embed_student.bias.copy_(torch.tensor(heads["bs"]))
        crd.embed_teacher.weight.copy_(torch.tensor(heads["wt"]))
        crd.embed_teacher.bias.copy_(torch.tensor(heads["bt"]))
    memory = (crd.memory.student.double().numpy().copy(), crd.memory.teacher.double().numpy().copy())
    z = None
    for step, (indices, seed) in enumerate((([3, 7, 0, 10], 1), ([1, 3, 11, 5], 2))):
        logits, student, teacher, batch = step_inputs(indices, seed)
        contrast = crd.memory.contrast_indices(batch.indices)  # what the step itself will draw
        assert contrast.shape == (B, 1 + K) and torch.equal(contrast[:, 0], batch.indices)
        assert ((contrast[:, 1:] != batch.indices[:, None]) & (contrast[:, 1:] >= 0) & (contrast[:, 1:] < N)).all()
        parts = crd(logits, student, teacher, batch)
        expected, z = numpy_step(heads, memory, z, logits.double().numpy(), student["pool"].double().numpy(),
                                 teacher["features:pool"].double().numpy(), batch.indices.numpy(),
                                 batch.labels.numpy(), contrast.numpy())
        assert parts["loss"].item() == pytest.approx(expected, rel=1e-5), step
        assert crd.memory.z.double().numpy() == pytest.approx(np.array(z), rel=1e-5), step  # fixed at step 0
        assert np.allclose(crd.memory.student.double().numpy(), memory[0], atol=1e-6), step
        assert np.allclose(crd.memory.teacher.double().numpy(), memory[1], atol=1e-6), step
    assert int(crd.memory.steps) == 2
    assert not np.allclose(np.linalg.norm(memory[0][[2, 4]], axis=1), 1.0)  # never written: still the random init
    capped = ContrastiveRepresentation(CONTEXT, feat_dim=D)  # nce_k 16384 > N - 1
    assert capped.memory.contrast_indices(torch.tensor([0, 11])).shape == (2, N)


def test_negatives_come_from_other_classes_uniformly_or_from_all_other_samples():
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 2, 0, 2, 1])  # classes of sizes 3, 4, 5, unsorted
    context = DistillContext(**{**vars(CONTEXT), "train_labels": labels})
    torch.manual_seed(0)
    crd = ContrastiveRepresentation(context, feat_dim=D, nce_k=4000)
    anchors = torch.tensor([0, 1, 2, 11])
    contrast = crd.memory.contrast_indices(anchors)
    assert torch.equal(contrast[:, 0], anchors) and contrast.shape == (4, 1 + N - 1)  # K capped at N - 1 = 11
    crd.memory.num_negatives = 4000  # many draws: the empirical distribution
    negatives = crd.memory.contrast_indices(anchors)[:, 1:]
    for row, anchor in enumerate(anchors.tolist()):
        others = [j for j in range(N) if labels[j] != labels[anchor]]
        counts = torch.bincount(negatives[row], minlength=N).double()
        assert set(torch.nonzero(counts).flatten().tolist()) == set(others)  # every other-class sample, only those
        assert counts[others].div(4000).sub(1 / len(others)).abs().max() < 0.03  # uniform among them
    uniform = ContrastiveRepresentation(context, feat_dim=D, nce_k=K, negatives_other_class=0)
    uniform.memory.num_negatives = 4000
    drawn = uniform.memory.contrast_indices(torch.tensor([4]))[0, 1:]
    assert set(drawn.tolist()) == set(range(N)) - {4}  # same-class samples too, never the anchor
    assert "memory.labels" not in crd.state_dict()  # derived from the data, not saved
    for bad, message in ((dict(negatives_other_class=0.5), "is 0 or 1"),):
        with pytest.raises(ValueError, match=message):
            ContrastiveRepresentation(context, feat_dim=D, **bad)
    with pytest.raises(ValueError, match="needs the training labels"):
        ContrastiveRepresentation(DistillContext(**{**vars(CONTEXT), "train_labels": None}), feat_dim=D)
    with pytest.raises(ValueError, match="two or more classes"):
        ContrastiveRepresentation(DistillContext(**{**vars(CONTEXT), "train_labels": torch.zeros(N, dtype=torch.long)}),
                                  feat_dim=D)



def test_negatives_leave_out_a_held_out_validation_split_and_count_only_the_pool():
    """With --val-fraction the held-out samples are never drawn (their bank rows are never updated); the NCE noise
    ratio and Z count the pool, not the whole split. Without a pool the draws are the plain ones."""
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 2, 0, 2, 1])
    held = {1, 6, 8}
    pool = torch.tensor([j for j in range(N) if j not in held])
    for other_class in (1, 0):
        torch.manual_seed(0)
        context = DistillContext(**{**vars(CONTEXT), "train_labels": labels, "train_indices": pool})
        crd = ContrastiveRepresentation(context, feat_dim=D, nce_k=4000, negatives_other_class=other_class)
        assert crd.memory.pool_size == N - len(held) and crd.memory.num_samples == N  # a bank row per index
        crd.memory.num_negatives = 2000
        anchors = torch.tensor([0, 2, 11])
        negatives = crd.memory.contrast_indices(anchors)[:, 1:]
        for row, anchor in enumerate(anchors.tolist()):
            allowed = {j for j in pool.tolist() if j != anchor and (not other_class or labels[j] != labels[anchor])}
            assert set(negatives[row].tolist()) == allowed
    torch.manual_seed(0)
    whole = ContrastiveRepresentation(DistillContext(**{**vars(CONTEXT), "train_labels": labels}), feat_dim=D, nce_k=K)
    torch.manual_seed(0)
    pooled = ContrastiveRepresentation(DistillContext(**{**vars(CONTEXT), "train_labels": labels,
                                                     "train_indices": torch.arange(N)}), feat_dim=D, nce_k=K)
    anchors = torch.tensor([3, 5, 7, 10])
    assert torch.equal(whole.memory.contrast_indices(anchors), pooled.memory.contrast_indices(anchors))


def test_negatives_are_distinct_per_row_by_default_as_the_benchmark_draws_them():
    """K = 40 of a pool of 50 other-class samples: no repeats in a row, never the own class; each pool member is
    in a row with probability K / pool (a draw without replacement), which repeats would lower."""
    labels = torch.arange(60) % 6  # six classes of 10: a pool of 50 per row
    context = DistillContext(num_classes=6, num_samples=60, student_shapes={"pool": (S_DIM,)},
                             teacher_shapes={"pool": (T_DIM,)}, train_labels=labels)
    torch.manual_seed(0)
    crd = ContrastiveRepresentation(context, feat_dim=D, nce_k=40)
    anchors = torch.tensor([7] * 300 + [12] * 300)
    negatives = crd.memory.contrast_indices(anchors)[:, 1:].numpy()
    for row, anchor in zip(negatives, anchors.tolist()):
        assert len(set(row.tolist())) == 40
        assert not (labels.numpy()[row] == labels[anchor].item()).any()
    for anchor in (7, 12):
        rows = negatives[anchors.numpy() == anchor]
        pool = np.flatnonzero(labels.numpy() != labels[anchor].item())
        share = np.array([(rows == j).any(1).mean() for j in pool])
        assert np.abs(share - 40 / 50).max() < 0.08  # binomial sd over 300 rows: 0.023
        assert (np.bincount(rows.ravel(), minlength=60)[labels.numpy() == labels[anchor].item()] == 0).all()

    everyone = ContrastiveRepresentation(context, feat_dim=D, nce_k=59, negatives_other_class=0)
    drawn = everyone.memory.contrast_indices(torch.tensor([4, 33]))[:, 1:]
    for row, anchor in zip(drawn.tolist(), (4, 33)):
        assert sorted(row) == [j for j in range(60) if j != anchor]  # all 59 others, each once

    with_replacement = ContrastiveRepresentation(context, feat_dim=D, nce_k=40, negatives_replace=1)
    rows = with_replacement.memory.contrast_indices(torch.tensor([7] * 50))[:, 1:]
    assert (labels[rows] != labels[7]).all()
    repeats = 1 - np.mean([len(set(r)) for r in rows.tolist()]) / 40
    expected = 1 - 50 * (1 - (1 - 1 / 50) ** 40) / 40  # 1 - E[distinct] / K for 40 draws from 50
    assert abs(repeats - expected) < 0.05 and expected > 0.25
    with pytest.raises(ValueError, match="negatives_replace is 0 or 1"):
        ContrastiveRepresentation(context, feat_dim=D, negatives_replace=2)

def test_gradients_reach_student_and_heads_but_not_teacher():
    crd = small_crd(CRDWithKD)
    logits, student, teacher, batch = step_inputs([2, 9, 4, 6], 3)
    for tensor in (logits, student["pool"], *teacher.values()):
        tensor.requires_grad_(True)
    parts = crd(logits, student, teacher, batch)
    assert set(parts) >= {"loss", "ce", "crd", "kd", "crd_student_anchor", "crd_teacher_anchor"}
    parts["loss"].backward()
    assert student["pool"].grad is not None and student["pool"].grad.abs().sum() > 0
    # Only CE and KD reach the logits: (softmax(z) - onehot) / B + kd_weight * T * (softmax(z/T) - softmax(t/T)) / B.
    z, t_logits, T = logits.detach().double().numpy(), teacher["logits"].detach().double().numpy(), 4.0
    want = np_softmax(z) - np.eye(CLASSES)[batch.labels.numpy()] + T * (np_softmax(z / T) - np_softmax(t_logits / T))
    np.testing.assert_allclose(logits.grad.numpy(), want / len(z), rtol=1e-5, atol=1e-7)
    for head in (crd.embed_student, crd.embed_teacher):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(t.grad is None for t in teacher.values())
    assert not any(b.requires_grad for b in crd.buffers())


def test_resume_from_state_dict_draws_the_same_negatives():
    steps = [step_inputs([0, 5, 8, 11], 4), step_inputs([2, 5, 7, 1], 5)]
    straight = small_crd()
    losses = [straight(*inputs)["loss"].item() for inputs in steps]
    first = small_crd()
    assert first(*steps[0])["loss"].item() == losses[0]
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = small_crd(seed=99)  # other initial heads, memory and draw seed: all must come from the state
    resumed.load_state_dict(saved)
    assert resumed(*steps[1])["loss"].item() == losses[1]
    assert torch.equal(resumed.memory.student, straight.memory.student)
    assert not torch.equal(small_crd(seed=99).memory.contrast_indices(torch.arange(4)),
                           straight.memory.contrast_indices(torch.arange(4)))  # the draws do depend on the seed


RANK_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from labelopt.stages.distillers.base import DistillContext
from labelopt.stages.distillers.crd import ContrastiveRepresentation
from labelopt.stages.batch import ViewedBatch
dist.init_process_group("gloo")
rank = dist.get_rank()
given = torch.load(sys.argv[1], weights_only=True)
crd = ContrastiveRepresentation(DistillContext(**given["context"]), **given["options"])
crd.load_state_dict(given["state"])
crd = DistributedDataParallel(crd, broadcast_buffers=False)
logits, student, teacher, batch = given["inputs"][rank]
crd(logits, student, teacher, ViewedBatch(*batch))["loss"].backward()
torch.save({k: v for k, v in crd.module.state_dict().items() if k.startswith("memory.")}, sys.argv[2] + str(rank))
dist.barrier()
dist.destroy_process_group()
# Rank 0 hosts the TCPStore here (no torchrun agent); its server thread can abort the interpreter's exit
# ("terminate called without an active exception"), so leave without running C++ static destructors.
os._exit(0)
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ranks_keep_identical_memories(tmp_path):
    """Two gloo ranks, each with its own samples: both end with the memory one process gets from all samples."""
    crd = small_crd()
    inputs = [step_inputs([0, 3, 6, 9], 6), step_inputs([1, 4, 7, 10], 7)]
    given = tmp_path / "given.pt"
    plain = [(logits, student, teacher, (b.images, b.labels, b.indices)) for logits, student, teacher, b in inputs]
    torch.save({"context": vars(CONTEXT), "options": {"feat_dim": D, "nce_k": K}, "state": crd.state_dict(),
                "inputs": plain}, given)  # plain tensors and containers: the ranks load it with weights_only
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(script), str(given), str(tmp_path / "memory")],
                              env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = [rank.communicate(timeout=120)[1] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(f"rank {r}: {e[-3000:]}" for r, e in enumerate(errors))
    memories = [torch.load(tmp_path / f"memory{r}", weights_only=True) for r in range(2)]
    for key in memories[0]:
        assert torch.equal(memories[0][key], memories[1][key]), key
    # A row's update depends only on its own sample: one process updating all eight rows must agree.
    with torch.no_grad():
        s = F.normalize(crd.embed_student(torch.cat([i[1]["pool"] for i in inputs])), dim=1)
        t = F.normalize(crd.embed_teacher(torch.cat([i[2]["features:pool"] for i in inputs])), dim=1)
    crd.memory.update(torch.cat([i[3].indices for i in inputs]), s, t)
    assert torch.allclose(memories[0]["memory.student"], crd.memory.student, atol=1e-6)
    assert torch.allclose(memories[0]["memory.teacher"], crd.memory.teacher, atol=1e-6)
    assert (memories[0]["memory.z"] > 0).all() and int(memories[0]["memory.steps"]) == 1


# --- end to end ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("crd-teacher") / "run"
    train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=1, batch_size=32,
                       device="cpu"), log=quiet)
    return out / "last.pt"


def check_run(out, method, source):
    config = json.loads((out / "config.json").read_text())
    assert config["method_resolved"]["name"] == method and config["teacher_source"]["kind"] == source
    last = torch.load(out / "last.pt", weights_only=True)
    extra = last["training"]["extra"]
    assert extra["memory.student"].shape == extra["memory.teacher"].shape == (96, 128)
    assert int(extra["memory.steps"]) == 96 // 32 and (extra["memory.z"] > 0).all()
    assert torch.allclose(extra["memory.student"].norm(dim=1), torch.ones(96), atol=1e-5)  # every row written
    assert extra["embed_student.weight"].shape == (128, 64)


def test_train_student_with_crd_online_and_crd_kd_from_a_store(teacher, tiny_cifar_dir, tmp_path):
    # The teacher's seed and batch size: the cached training loader is reused (no new numba compile).
    base = dict(data=str(tiny_cifar_dir), arch="resnet20", epochs=1, batch_size=32, seed=0, device="cpu")
    online = train_student(StudentOptions(**base, out=str(tmp_path / "crd"), method="crd", teachers=(str(teacher),)),
                           log=quiet)
    check_run(online, "crd", "online")
    store = tmp_path / "pool.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(store), teachers=(str(teacher),),
                                    logits=True, features=("pool",), device="cpu"), log=quiet)
    stored = train_student(StudentOptions(**base, out=str(tmp_path / "crd-kd"), method="crd+kd", labels=str(store)),
                           log=quiet)
    check_run(stored, "crd+kd", "store")
