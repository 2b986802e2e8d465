"""Step-CoT's three networks on frozen image features: the graph-attention teacher, the image-only student and
the independent per-step baseline (``shared/research/agent_methods.md`` sections 2.4, 2.5 and 4.2).

Teacher (2.4). Eight nodes, fully connected, self-loops included: the seven step prompts (MiniLM, projected to
``hidden``) and a learnable memory node (zeros at the start). A 2-layer, 4-head GAT (logits LeakyReLU_0.2(a_src.Wh_i
+ a_dst.Wh_j), softmax over j, dropout 0.1 on the attention, heads concatenated, then ELU(LayerNorm(h' + P x)))
reused at every step. For step i = 1..7: run the GAT and keep its output as the new node states; context c_i =
MLP([node_i ; memory]); logits z_i = W_cls,i Fusion([ImgProj_i(image) ; c_i]); memory write u_i = softmax(z_i)^T
W_cls,i (the expected class prototype), memory <- GRUCell(Linear(u_i), memory). The GAT-updated memory node is the
GRU's hidden state. This is the "dynamic graph-structured focusing": attention over steps and memory, and a
memory that carries each step's predicted answer forward.

Student (2.5). f = ImgProj(image) (Linear, LayerNorm, ReLU, Dropout 0.3); for each step z_i = H_i f, then
f <- f + tanh(z_i H_i), the repo's cheap chain through the class prototypes. No text, no graph.

Baseline (ours, the issue's control). Seven separate MLPs (Linear, LayerNorm, ReLU, Dropout, Linear), one per
step, each trained alone on the same features: no shared layer, no chain, no graph.

Deviations, for CPU and the smaller encoders: hidden size 128 in the teacher (768 in the repo; 4 heads x 32 dims;
the graph runs 2 layers x 7 steps over 8 nodes per image, so its cost grows with the square of the width),
512 in the student as in the repo; image features 1600-d (see :mod:`macro.tools.vqa.encoders`) and text 384-d, so the
prompts pass through a learned Linear(384 -> hidden) before the graph (the repo feeds BERT's 768-d [CLS] directly).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _block(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU(), nn.Dropout(dropout))


class Standardise(nn.Module):
    """Per-dimension standardisation of the frozen features with the training split's statistics, stored with the
    weights: the pooled activations differ in scale by orders of magnitude across channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GATLayer(nn.Module):
    """Multi-head graph attention over a fully connected node set, with the repo's residual, LayerNorm and ELU."""

    def __init__(self, dim: int, heads: int = 4, attn_dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.W = nn.Linear(dim, dim, bias=False)
        self.a_src = nn.Parameter(torch.empty(heads, self.head_dim))
        self.a_dst = nn.Parameter(torch.empty(heads, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.residual = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(attn_dropout)
        nn.init.xavier_uniform_(self.a_src)
        nn.init.xavier_uniform_(self.a_dst)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x (B, N, dim) -> (B, N, dim); with ``return_attention`` also alpha (B, heads, N, N), rows summing to 1."""
        b, n, _ = x.shape
        wh = self.W(x).view(b, n, self.heads, self.head_dim)
        src = (wh * self.a_src).sum(-1).transpose(1, 2)  # (B, heads, N): a_src . W h_i
        dst = (wh * self.a_dst).sum(-1).transpose(1, 2)  # (B, heads, N): a_dst . W h_j
        alpha = torch.softmax(nn.functional.leaky_relu(src.unsqueeze(-1) + dst.unsqueeze(-2), 0.2), dim=-1)
        out = torch.einsum("bhij,bjhd->bihd", self.dropout(alpha), wh).reshape(b, n, -1) + self.bias
        out = nn.functional.elu(self.norm(out + self.residual(x)))
        return (out, alpha) if return_attention else out


class Teacher(nn.Module):
    """The graph-attention teacher. ``prompts`` (7, text_dim) are the frozen step-prompt embeddings, kept as a
    buffer so the saved weights answer without the text encoder."""

    def __init__(
        self,
        feat_dim: int,
        n_classes: Sequence[int],
        prompts: torch.Tensor,
        hidden: int = 128,
        heads: int = 4,
        layers: int = 2,
    ):
        super().__init__()
        self.n_classes = tuple(int(c) for c in n_classes)
        steps = len(self.n_classes)
        if prompts.shape[0] != steps:
            raise ValueError(f"{prompts.shape[0]} prompt embeddings for {steps} steps")
        self.register_buffer("prompts", prompts.float().clone())
        self.norm = Standardise(feat_dim)
        self.text_proj = nn.Linear(prompts.shape[1], hidden)
        self.memory0 = nn.Parameter(torch.zeros(hidden))
        self.gat = nn.ModuleList(GATLayer(hidden, heads) for _ in range(layers))
        self.context = _block(2 * hidden, hidden, 0.2)
        self.img_proj = nn.ModuleList(_block(feat_dim, hidden, 0.3) for _ in range(steps))
        self.fusion = nn.ModuleList(
            nn.Sequential(_block(2 * hidden, hidden, 0.3), _block(hidden, hidden, 0.3)) for _ in range(steps)
        )
        self.cls = nn.ModuleList(nn.Linear(hidden, c) for c in self.n_classes)
        self.answer_in = nn.Linear(hidden, hidden)
        self.gru = nn.GRUCell(hidden, hidden)

    def graph(self, nodes: torch.Tensor, attention: list | None = None) -> torch.Tensor:
        for layer in self.gat:
            if attention is None:
                nodes = layer(nodes)
            else:
                nodes, alpha = layer(nodes, return_attention=True)
                attention.append(alpha)
        return nodes

    def forward(self, image: torch.Tensor, trace: dict | None = None):
        """image (B, feat_dim) -> (list of 7 logits (B, C_i), list of 7 step image features (B, hidden)).

        ``trace``, when given, collects per step the attention maps and the memory state after the write."""
        image = self.norm(image)
        b = image.shape[0]
        steps = len(self.n_classes)
        text = self.text_proj(self.prompts).unsqueeze(0).expand(b, -1, -1)
        nodes = torch.cat([text, self.memory0.expand(b, 1, -1)], dim=1)
        logits, features = [], []
        for i in range(steps):
            attention = [] if trace is not None else None
            nodes = self.graph(nodes, attention)
            memory = nodes[:, steps]
            context = self.context(torch.cat([nodes[:, i], memory], dim=-1))
            feature = self.img_proj[i](image)
            z = self.cls[i](self.fusion[i](torch.cat([feature, context], dim=-1)))
            answer = torch.softmax(z, dim=-1) @ self.cls[i].weight  # expected class prototype, (B, hidden)
            memory = self.gru(self.answer_in(answer), memory)
            nodes = torch.cat([nodes[:, :steps], memory.unsqueeze(1)], dim=1)
            logits.append(z)
            features.append(feature)
            if trace is not None:
                trace.setdefault("attention", []).append(attention)
                trace.setdefault("memory", []).append(memory.detach())
        return logits, features


class Student(nn.Module):
    """Image-only student: one projection, seven linear heads chained through tanh prototype residuals."""

    def __init__(self, feat_dim: int, n_classes: Sequence[int], hidden: int = 512):
        super().__init__()
        self.n_classes = tuple(int(c) for c in n_classes)
        self.norm = Standardise(feat_dim)
        self.img_proj = _block(feat_dim, hidden, 0.3)
        self.heads = nn.ModuleList(nn.Linear(hidden, c) for c in self.n_classes)

    def forward(self, image: torch.Tensor):
        """image (B, feat_dim) -> (list of 7 logits, the projected image feature f before the chain)."""
        f0 = f = self.img_proj(self.norm(image))
        logits = []
        for head in self.heads:
            z = head(f)
            f = f + torch.tanh(z @ head.weight)
            logits.append(z)
        return logits, f0


class StepClassifier(nn.Module):
    """One step of the baseline: an MLP on the image feature, or a linear classifier when ``hidden`` is 0."""

    def __init__(self, feat_dim: int, n_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = Standardise(feat_dim)
        self.net = (
            nn.Sequential(_block(feat_dim, hidden, dropout), nn.Linear(hidden, n_classes))
            if hidden
            else nn.Linear(feat_dim, n_classes)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(image))


class Baseline(nn.Module):
    """Seven independently trained per-step classifiers, packaged to answer like the other two."""

    def __init__(self, classifiers: Sequence[StepClassifier]):
        super().__init__()
        self.steps = nn.ModuleList(classifiers)

    def forward(self, image: torch.Tensor):
        return [step(image) for step in self.steps], None
