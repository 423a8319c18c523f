"""Concept embeddings (NSCL-REFERENCE section 3).

Dimension key: B images, N objects (padded), D feature size, E embedding size (64), A attribute spaces,
C concepts.

Every attribute space ``a`` has an operator ``W_a`` (Linear D -> E). Every object concept ``c`` has a vector
``e_{c,a}`` in every space and a belong logit vector ``beta_c`` over the spaces. With margin m and temperature
tau::

    s_a(f, c)  = (cos(W_a f, e_{c,a}) - 1 + m) / (m * tau)
    logit_c(f) = logsumexp_a( s_a(f, c) + log_softmax(beta_c)_a )

Relations use the same formula in their own space (one space, so the belong term vanishes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..domain import Domain

SELF_MASK = -10.0  # logit on the diagonal of same-attribute and relation matrices


@dataclass(frozen=True)
class ConceptConfig:
    embedding_dim: int = 64
    margin: float = 0.85
    tau: float = 0.25
    same_margin: float = 0.5
    known_belong: bool = False  # fix beta_c to the concept's true attribute instead of learning it


class ConceptEmbedding(nn.Module):
    """Attribute operators, concept vectors and belong logits for one domain."""

    def __init__(self, domain: Domain, feature_dim: int, relation_dim: int, cfg: ConceptConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attributes = domain.attribute_names
        self.concepts = domain.object_concepts
        self.relations = domain.relation_concepts
        A, C, E = len(self.attributes), len(self.concepts), cfg.embedding_dim
        self.operators = nn.Linear(feature_dim, A * E)  # all W_a at once: (D) -> (A * E)
        self.relation_operator = nn.Linear(relation_dim, E)
        self.embeddings = nn.Parameter(torch.randn(C, A, E) * 0.1)  # e_{c,a}
        self.relation_embeddings = nn.Parameter(torch.randn(len(self.relations), E) * 0.1)
        owner = torch.tensor(
            [self.attributes.index(domain.attribute_of_concept(c).name) for c in self.concepts]
        )
        self.register_buffer("owner", owner, persistent=False)  # (C,) index of each concept's attribute
        if cfg.known_belong:
            self.register_buffer("belong_fixed", F.one_hot(owner, A).float() * 20.0 - 10.0, persistent=False)
            self.belong = None
        else:
            self.belong = nn.Parameter(torch.zeros(C, A))
        # concept ids of each attribute, for query answers
        self.attribute_concepts = {
            a.name: [self.concepts.index(c) for c in a.concepts] for a in domain.attributes
        }
        nn.init.kaiming_normal_(self.operators.weight)
        nn.init.zeros_(self.operators.bias)
        nn.init.kaiming_normal_(self.relation_operator.weight)
        nn.init.zeros_(self.relation_operator.bias)

    def log_belong(self) -> Tensor:
        """(C, A) log-probability that each concept belongs to each attribute space."""
        beta = self.belong if self.belong is not None else self.belong_fixed
        return F.log_softmax(beta, dim=-1)

    def project(self, feats: Tensor) -> Tensor:
        """feats (Tensor[..., D]) -> unit vectors per space (Tensor[..., A, E])."""
        A, E = len(self.attributes), self.cfg.embedding_dim
        z = self.operators(feats).unflatten(-1, (A, E))
        return F.normalize(z, dim=-1)

    def similarity(self, proj: Tensor) -> Tensor:
        """proj (Tensor[..., A, E]) -> s_a(f, c) as (Tensor[..., C, A])."""
        m, tau = self.cfg.margin, self.cfg.tau
        emb = F.normalize(self.embeddings, dim=-1)  # (C, A, E)
        cos = torch.einsum("...ae,cae->...ca", proj, emb)
        return (cos - 1 + m) / (m * tau)

    def concept_logits(self, proj: Tensor, sim: Tensor | None = None) -> Tensor:
        """(Tensor[..., A, E]) -> is-an-instance logits for every concept (Tensor[..., C]). ``sim`` is
        ``similarity(proj)`` when the caller already has it."""
        sim = self.similarity(proj) if sim is None else sim
        return torch.logsumexp(sim + self.log_belong(), dim=-1)

    def query_logits(self, proj: Tensor, attribute: str, sim: Tensor | None = None) -> Tensor:
        """(Tensor[..., A, E]) -> logits over the attribute's concepts (Tensor[..., C_a])."""
        a = self.attributes.index(attribute)
        ids = self.attribute_concepts[attribute]
        s = (self.similarity(proj) if sim is None else sim)[..., ids, a]  # (..., C_a)
        return s + self.log_belong()[ids, a]

    def same_logits(self, proj: Tensor, mask: Tensor) -> Tensor:
        """proj (Tensor[B, N, A, E]), mask (Tensor[B, N] bool) -> (Tensor[B, A, N, N]) same-attribute logits
        with the diagonal at -10."""
        m, tau = self.cfg.same_margin, self.cfg.tau
        p = proj.transpose(1, 2)  # (B, A, N, E)
        cos = p @ p.transpose(-1, -2)  # (B, A, N, N)
        logits = (cos - 1 + m) / (m * tau)
        n = logits.shape[-1]
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        return logits.masked_fill(eye, SELF_MASK)

    def relation_logits(self, rel_feats: Tensor) -> Tensor:
        """rel_feats (Tensor[B, N, N, D_r]) -> (Tensor[B, R, N, N]); [b, r, i, j] = "j is r of i"."""
        m, tau = self.cfg.margin, self.cfg.tau
        z = F.normalize(self.relation_operator(rel_feats), dim=-1)  # (B, N, N, E)
        emb = F.normalize(self.relation_embeddings, dim=-1)  # (R, E)
        cos = torch.einsum("bije,re->brij", z, emb)
        logits = (cos - 1 + m) / (m * tau)
        n = logits.shape[-1]
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        return logits.masked_fill(eye, SELF_MASK)
