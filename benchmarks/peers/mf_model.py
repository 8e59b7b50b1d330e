"""RouteLLM-style matrix factorisation in PyTorch, as a quality model.

RouteLLM's MF router scores (prompt, model) by projecting the prompt's
embedding, multiplying it elementwise by a learned model embedding and
reducing the product with a linear layer. Here the prompt embedding is the
dense features of peer_features.py (SVD of TF-IDF + log length), there is
one learned embedding per expert, and the score is a logit of the expert's
quality, trained with binary cross-entropy on the quality in [0, 1] (soft
labels where llmrouter14's score is fractional; missing outcomes masked).
"""

import numpy as np
import torch
from torch import nn

from quality_models import SEED, THREADS, train_valid_split

MF_DIMS = (16, 64)
MF_MAX_EPOCHS = 100
MF_PATIENCE = 8
MF_BATCH = 256
MF_LRS = (3e-3, 1e-2)
MF_WEIGHT_DECAY = 1e-5


class MfNet(nn.Module):
    def __init__(self, n_in, n_experts, dim):
        super().__init__()
        self.project = nn.Linear(n_in, dim, bias=False)
        self.experts = nn.Parameter(torch.randn(n_experts, dim) / dim ** 0.5)
        self.head = nn.Linear(dim, 1)
        self.bias = nn.Parameter(torch.zeros(n_experts))

    def forward(self, z):
        h = self.project(z)  # prompts x dim
        product = h[:, None, :] * self.experts[None, :, :]  # prompts x experts x dim
        return self.head(product).squeeze(-1) + self.bias  # logits


def masked_bce(logits, target, has):
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * has).sum() / has.sum()


def train_net(z, quality, dim, lr, epochs, valid=None):
    """Adam on minibatches; with `valid`, returns (net, best epoch count)."""
    torch.manual_seed(SEED)
    net = MfNet(z.shape[1], quality.shape[1], dim)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=MF_WEIGHT_DECAY)
    has = torch.tensor(~np.isnan(quality), dtype=torch.float32)
    target = torch.tensor(np.nan_to_num(quality), dtype=torch.float32)
    zt = torch.tensor(z, dtype=torch.float32)
    best, best_epoch = np.inf, epochs
    for epoch in range(1, epochs + 1):
        net.train()
        for batch in torch.randperm(len(zt)).split(MF_BATCH):
            opt.zero_grad()
            masked_bce(net(zt[batch]), target[batch], has[batch]).backward()
            opt.step()
        if valid is None:
            continue
        loss = validation_mse(net, *valid)
        if loss < best:
            best, best_epoch = loss, epoch
        elif epoch - best_epoch >= MF_PATIENCE:
            break
    return net, best_epoch, best


def validation_mse(net, z, quality):
    net.eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.tensor(z, dtype=torch.float32))).numpy()
    return float(np.nanmean((p - quality) ** 2))


class MfModel:
    """Embedding size and epochs by early stopping on a train-internal split."""

    def fit(self, z, quality):
        torch.set_num_threads(THREADS)
        fit, valid = train_valid_split(len(z))
        self.cv = {}
        for dim in MF_DIMS:
            for lr in MF_LRS:
                _, epochs, mse = train_net(z[fit], quality[fit], dim, lr, MF_MAX_EPOCHS,
                                           valid=(z[valid], quality[valid]))
                self.cv[(dim, lr)] = (mse, epochs)
        self.dim, self.lr = min(self.cv, key=lambda key: self.cv[key][0])
        self.epochs = self.cv[(self.dim, self.lr)][1]
        self.net, _, _ = train_net(z, quality, self.dim, self.lr, self.epochs)
        self.net.eval()
        return self

    def set_threads(self, n):
        torch.set_num_threads(n)

    def predict(self, z):
        with torch.no_grad():
            return torch.sigmoid(self.net(torch.tensor(z, dtype=torch.float32))).numpy()

    def hyper_parameters(self):
        return {"dim": self.dim, "lr": self.lr, "epochs": self.epochs, "batch": MF_BATCH,
                "weight_decay": MF_WEIGHT_DECAY,
                **{f"dim{d}_lr{lr:g}_valid_mse": m for (d, lr), (m, _) in self.cv.items()},
                **{f"dim{d}_lr{lr:g}_epochs": e for (d, lr), (_, e) in self.cv.items()}}
