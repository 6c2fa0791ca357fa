"""Data-free model extraction (Truong et al., CVPR 2021), sized for thousands of queries.

A generator turns latent noise (256-d) into images; it is trained to maximise the L1
disagreement between the victim's and the clone's logits, with the victim's side of the
gradient estimated by forward differences (``m`` random unit directions, ``epsilon = 1e-3``):
each generator step costs ``batch * (m + 1)`` queries. After each generator step the clone
takes ``student_steps`` steps on fresh generated batches (``batch`` queries each). Logits are
recovered from returned probabilities as ``log p - mean(log p)`` (the paper's trick); a
label-only thief uses the one-hot answer the same way, for which the estimate is mostly zero.

The paper spends millions of queries; at 4,000 the generator takes about 18 steps and the
clone stays at chance on real digits (measured: also with ``replay=True``, which ends by
training the clone on every answer bought, like the other attacks; off by default to save
the evaluation's CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import AttackResult, Evaluate, concat_answers, spendable
from .clone import CloneTrainer, training_targets
from .oracle import Answer, Oracle


class Generator(nn.Module):
    """DCGAN-style generator: latent -> (C, H, W) in (0, 1); H and W divisible by 4.

    ``width`` 32 (the paper's CIFAR generator has 64): at 64 the generator cost about twice
    the clone's compute per query on this CPU.
    """

    def __init__(self, shape: tuple[int, int, int], latent: int = 256, width: int = 32) -> None:
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"generator needs H and W divisible by 4, got {shape}")
        self.latent = latent
        self.start = (width * 2, h // 4, w // 4)
        self.fc = nn.Linear(latent, width * 2 * (h // 4) * (w // 4))
        self.body = nn.Sequential(
            nn.BatchNorm2d(width * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width * 2, width * 2, 3, 1, 1),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width * 2, width, 3, 1, 1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, 1, 1),
            nn.BatchNorm2d(c, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[N, C, H, W]`` in (0, 1) from latent vectors ``z`` ``[N, latent]``."""
        x = self.fc(z).view(-1, *self.start)
        return torch.sigmoid(self.body(x))


STUDENT_MAX_GRAD_NORM = 5.0


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _logits(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Recover centred logits from probabilities: ``log p - mean(log p)``."""
    t = torch.as_tensor(targets, dtype=torch.float32)
    log_p = torch.log(t.clamp_min(1e-6))
    return log_p - log_p.mean(dim=1, keepdim=True)


@dataclass(eq=False)
class Dfme:
    """DFME: a generator invents the queries; the clone learns to match the victim's answers.

    ``directions`` (``m``) and ``epsilon`` set the forward-difference estimate of the victim's
    gradient; ``replay`` ends by training the clone on every answer bought.
    """

    name: ClassVar[str] = "dfme"

    shape: tuple[int, int, int]
    latent: int = 256
    batch_size: int = 32
    student_steps: int = 5
    directions: int = 1
    epsilon: float = 1e-3
    lr_generator: float = 5e-4
    lr_student: float = 0.05
    replay: bool = False
    seed: int = 0

    def _victim_logits(self, answer: Answer, output_type: str) -> torch.Tensor:
        targets = (
            answer.probs
            if output_type == "probs"
            else training_targets(Answer(answer.probs, np.maximum(answer.labels, 0)), "labels")[1]
        )
        return _logits(targets)

    def _generator_step(self, generator, clone, opt_g, gen, ask, output_type: str) -> None:
        """Maximise the clone's disagreement; the victim's gradient by forward differences."""
        b, m = self.batch_size, self.directions
        dim = int(np.prod(self.shape))
        generator.train()
        clone.eval()
        x = generator(torch.randn(b, self.latent, generator=gen))
        x0 = x.detach().numpy()
        u = torch.randn(b, m, dim, generator=gen)
        u = u / u.norm(dim=2, keepdim=True)
        shifted = np.clip(x0[:, None] + self.epsilon * u.view(b, m, *self.shape).numpy(), 0, 1)
        batch = np.concatenate([x0, shifted.reshape(b * m, *self.shape)]).astype(np.float32)
        answer = ask(batch)
        with torch.no_grad():
            student = clone(torch.from_numpy(batch))
            student = student - student.mean(dim=1, keepdim=True)
            loss = (self._victim_logits(answer, output_type) - student).abs().sum(dim=1)
        base, moved = loss[:b], loss[b:].view(b, m)
        grad = (dim / (m * self.epsilon)) * ((moved - base[:, None])[..., None] * u).sum(1)
        opt_g.zero_grad()
        x.backward(-grad.view_as(x) / b)  # ascend the disagreement
        opt_g.step()

    def _student_steps(self, generator, clone, opt_s, gen, oracle, ask, output_type: str) -> None:
        """The clone's steps on fresh generated batches, while the budget lasts."""
        generator.eval()
        clone.train()
        for _ in range(self.student_steps):
            n = spendable(oracle, self.batch_size)
            if n == 0:
                break
            with torch.no_grad():
                xs = generator(torch.randn(n, self.latent, generator=gen)).numpy()
            answer = ask(xs)
            student = clone(torch.from_numpy(xs))
            student = student - student.mean(dim=1, keepdim=True)
            s_loss = F.l1_loss(student, self._victim_logits(answer, output_type))
            opt_s.zero_grad()
            s_loss.backward()
            # SGD at lr 0.05 on an L1 of recovered logits can blow up on a few unlucky
            # batches (seen as a NaN clone on some CPUs): bound the step.
            nn.utils.clip_grad_norm_(clone.parameters(), STUDENT_MAX_GRAD_NORM)
            opt_s.step()

    def run(
        self,
        oracle: Oracle,
        trainer: CloneTrainer,
        output_type: str,
        evaluate: Evaluate | None = None,
    ) -> AttackResult:
        """Alternate generator and clone steps while the budget pays for a generator step.

        ``info`` holds the generator steps taken and whether the clone diverged (then the
        clone returned is a fresh one, trained on the answers only if ``replay`` is set).
        """
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        generator = Generator(self.shape, self.latent)
        clone = trainer.new_model()
        opt_g = torch.optim.Adam(generator.parameters(), lr=self.lr_generator)
        opt_s = torch.optim.SGD(clone.parameters(), lr=self.lr_student, momentum=0.9)
        b, m = self.batch_size, self.directions
        seen: list[np.ndarray] = []
        answers = Answer(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        curve: list[tuple[int, float]] = []
        generator_steps = 0

        def ask(x: np.ndarray) -> Answer:
            nonlocal answers
            a = oracle.query(x)
            seen.append(x)
            answers = concat_answers(answers, a)
            return a

        while spendable(oracle, b * (m + 1)) == b * (m + 1):
            self._generator_step(generator, clone, opt_g, gen, ask, output_type)
            generator_steps += 1
            self._student_steps(generator, clone, opt_s, gen, oracle, ask, output_type)
            if evaluate is not None:
                curve.append((oracle.queries_used, evaluate(clone)))
        clone.eval()
        images = np.concatenate(seen) if seen else np.zeros((0, *self.shape), np.float32)
        if not _finite(clone):  # diverged anyway: what was bought is still worth a clone
            clone = trainer.new_model()
            info_diverged = True
        else:
            info_diverged = False
        if self.replay and len(images):
            clone = trainer.fit_answers(images, answers, output_type, model=clone)
            if evaluate is not None:
                curve.append((len(images), evaluate(clone)))
        info = {
            "generator_steps": generator_steps,
            "replay": self.replay,
            "diverged": info_diverged,
        }
        return AttackResult(self.name, output_type, clone, len(images), curve, info)
