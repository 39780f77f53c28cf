"""Analytic (roofline) device profiles for hardware we do not have, each number with its source.

`ANALYTIC_DEVICES` lists peak dense FLOP/s at fp16, memory bandwidth and power by state; the built-in
profile files `sparkv/data/profiles/<name>.json` are written from it by `write_builtin_profiles()`
(and a test checks they agree). These profiles fit any `ModelSpec`, so they serve what-if studies
(`sparkv simulate --model llama-3.1-8b --device jetson-agx-orin-30w`). Numbers marked "estimate"
could not be confirmed against a vendor document and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparkv.cost_models.compute import RooflineCompute
from sparkv.cost_models.energy import ComputePower
from sparkv.cost_models.profiles import DeviceProfile

_ORIN_BRIEF = "NVIDIA Jetson AGX Orin Series Technical Brief v1.2"
_AGX_NVP = "nvpmodel_p3701_0000.conf (Jetson Linux, via LineageOS/android_device_nvidia_concord)"
_NANO_NVP = "nvpmodel_p3767_0003_super.conf (Jetson Linux, via LineageOS/android_device_nvidia_concord)"
_GA10B = (
    "GA10B (Orin GPU) dense fp16 tensor rate 2048 FLOP/clk/SM, derived from the brief's 170 sparse INT8 TOPS "
    "for 16 SMs at 1.3 GHz (sparse = 2x dense, INT8 = 2x fp16, as on GA100)"
)
_EAGER = "estimate: eager PyTorch runs ~15 kernels per decoder layer; per-kernel launch cost on this class of host"


@dataclass(frozen=True)
class AnalyticDevice:
    """Published figures of one device (at one power mode)."""

    name: str
    description: str
    peak_flops: float  # dense fp16 FLOP/s
    mem_bw_bps: float
    active_w: float
    idle_w: float
    flops_efficiency: float
    per_layer_s: float
    launch_s: float
    install_s_per_byte: float
    sources: dict[str, str]

    def profile(self) -> DeviceProfile:
        compute = RooflineCompute(
            peak_flops=self.peak_flops,
            mem_bw_bps=self.mem_bw_bps,
            flops_efficiency=self.flops_efficiency,
            launch_s=self.launch_s,
            per_layer_s=self.per_layer_s,
        )
        power = ComputePower(self.active_w, self.idle_w, self.sources.get("power", ""))
        return DeviceProfile(
            name=self.name,
            kind="analytic",
            device=self.description,
            compute=compute,
            power=power,
            install_s_per_byte=self.install_s_per_byte,
            install_fixed_s=0.0005,
            model=None,
            dtype="float16",
            threads=0,
            date="2026-11-23",
            valid_for="what-if estimates for any model spec at fp16/bf16; a roofline, not a measurement",
            sources=self.sources,
        )


def _agx(mode: str, sms: int, ghz: float, emc_mhz: int, watts: float) -> AnalyticDevice:
    bw = 204.8e9 * emc_mhz / 3200
    return AnalyticDevice(
        name=f"jetson-agx-orin-{mode.lower()}",
        description=f"NVIDIA Jetson AGX Orin 64GB, {mode} power mode: {sms} of 16 SMs at {ghz * 1e3:.0f} MHz, "
        f"LPDDR5 at EMC {emc_mhz} MHz (GPU, fp16 tensor cores)",
        peak_flops=sms * 2048 * ghz * 1e9,
        mem_bw_bps=bw,
        active_w=watts,
        idle_w=5.0,
        flops_efficiency=0.5,
        per_layer_s=3e-4,
        launch_s=1e-3,
        install_s_per_byte=5e-10,
        sources={
            "peak_flops": f"{sms} SMs x 2048 FLOP/clk x {ghz} GHz; SMs from TPC_PG_MASK and GPU MAX_FREQ of mode "
            f"{mode} in {_AGX_NVP} (MAXN: 1.3 GHz, all 16 SMs, {_ORIN_BRIEF}); {_GA10B}",
            "mem_bw_bps": f"256-bit LPDDR5, 204.8 GB/s at 3200 MHz ({_ORIN_BRIEF}), scaled by the mode's EMC cap "
            f"({emc_mhz} MHz) in {_AGX_NVP}",
            "power": f"active = the {mode} module power budget (MAXN: 'up to 60 W' module maximum, {_ORIN_BRIEF}); "
            "idle 5 W: estimate for the module at rest (no datasheet figure)",
            "flops_efficiency": "estimate: achieved/peak for prefill GEMMs of 1-8B models on Ampere tensor cores",
            "per_layer_s": _EAGER + " (Cortex-A78AE, ~20 us)",
            "install_s_per_byte": "estimate: CPU decode + copy into unified memory, ~2 GB/s on Cortex-A78AE",
            "memory": "64 GB LPDDR5 shared by CPU and GPU",
        },
    )


def _nano(mode: str, ghz: float, emc_mhz: int, watts: float) -> AnalyticDevice:
    bw = 102.4e9 * emc_mhz / 3199
    return AnalyticDevice(
        name=f"jetson-orin-nano-{mode.lower().replace('_', '-')}",
        description=f"NVIDIA Jetson Orin Nano 8GB (Super), {mode} power mode: 8 SMs at {ghz * 1e3:.0f} MHz, "
        f"128-bit LPDDR5 at EMC {emc_mhz} MHz (GPU, fp16 tensor cores)",
        peak_flops=8 * 2048 * ghz * 1e9,
        mem_bw_bps=bw,
        active_w=watts,
        idle_w=3.0,
        flops_efficiency=0.5,
        per_layer_s=3e-4,
        launch_s=1e-3,
        install_s_per_byte=6e-10,
        sources={
            "peak_flops": f"8 SMs (1024 CUDA cores, 32 tensor cores) x 2048 FLOP/clk x {ghz} GHz; GPU MAX_FREQ of "
            f"mode {mode} in {_NANO_NVP} (MAXN_SUPER: 1.02 GHz, Jetson Orin Nano Super datasheet: 67 sparse INT8 "
            f"TOPS, consistent); {_GA10B}",
            "mem_bw_bps": f"128-bit LPDDR5: 102 GB/s at EMC 3199 MHz, 68 GB/s at 2133 MHz (Orin Nano Super datasheet; "
            f"EMC cap of the mode in {_NANO_NVP})",
            "power": f"active = the {mode} budget (MAXN_SUPER: 25 W, the datasheet's top of '7-25 W'); idle 3 W: "
            "estimate (no datasheet figure)",
            "flops_efficiency": "estimate: achieved/peak for prefill GEMMs on Ampere tensor cores",
            "per_layer_s": _EAGER + " (Cortex-A78AE, ~20 us)",
            "install_s_per_byte": "estimate: CPU decode + copy into unified memory, ~1.7 GB/s",
            "memory": "8 GB LPDDR5 shared by CPU and GPU: only models up to ~3B parameters at fp16 fit",
        },
    )


ANALYTIC_DEVICES: tuple[AnalyticDevice, ...] = (
    _agx("15W", 6, 0.408, 2133, 15.0),
    _agx("30W", 8, 0.612, 3200, 30.0),
    _agx("50W", 16, 0.816, 3200, 50.0),
    _agx("MAXN", 16, 1.3005, 3200, 60.0),
    _nano("15W", 0.612, 2133, 15.0),
    _nano("25W", 0.918, 3199, 25.0),
    _nano("MAXN_SUPER", 1.020, 3199, 25.0),
    AnalyticDevice(
        name="snapdragon-8gen3-npu",
        description="Qualcomm Snapdragon 8 Gen 3 phone SoC, Hexagon NPU running fp16/int8-class prefill "
        "(NPU-class figures), LPDDR5X-4800",
        peak_flops=22.5e12,
        mem_bw_bps=76.8e9,
        active_w=6.0,
        idle_w=0.3,
        flops_efficiency=0.3,
        per_layer_s=5e-4,
        launch_s=2e-3,
        install_s_per_byte=5e-10,
        sources={
            "peak_flops": "estimate: half of the ~45 INT8 TOPS third-party sites attribute to the Hexagon NPU "
            "(runlocalai.co); Qualcomm publishes only '+98% AI performance' over 8 Gen 2, no TOPS figure",
            "mem_bw_bps": "LPDDR5X up to 4800 MHz (Qualcomm 8 Gen 3 spec sheet) = 9600 MT/s x 64-bit bus "
            "(bus width: estimate, the usual phone configuration) = 76.8 GB/s",
            "power": "estimate: ~6 W sustained SoC power under an NPU+CPU load in a phone's thermal envelope; "
            "0.3 W idle (screen-off SoC); no vendor figure",
            "flops_efficiency": "estimate: NPUs reach a fraction of peak on transformer prefill (attention, "
            "layout changes)",
            "per_layer_s": "estimate: per-layer graph dispatch on the NPU runtime",
            "install_s_per_byte": "estimate: CPU decode + copy, ~2 GB/s on a Cortex-A720 core",
            "memory": "12-16 GB LPDDR5X in flagship phones (shared)",
        },
    ),
    AnalyticDevice(
        name="rtx-4060-laptop",
        description="NVIDIA GeForce RTX 4060 Laptop GPU (AD107, 24 SMs) at 115 W TGP, 2370 MHz boost, "
        "8 GB GDDR6 128-bit 16 Gbps",
        peak_flops=24 * 256 * 2.37e9,
        mem_bw_bps=256e9,
        active_w=115.0,
        idle_w=8.0,
        flops_efficiency=0.6,
        per_layer_s=1.5e-4,
        launch_s=5e-4,
        install_s_per_byte=2e-10,
        sources={
            "peak_flops": "24 SMs x 256 dense fp16 FLOP/clk with fp32 accumulate (what PyTorch's fp16 GEMMs use) "
            "x 2.37 GHz; per-SM rate derived from the Ada whitepaper's RTX 4090 figures (165.2 dense fp16 "
            "TFLOPS with fp16 accumulate, half with fp32 accumulate, 128 SMs at 2.52 GHz); boost clock and SM "
            "count: NVIDIA laptop GPU spec (1470-2370 MHz over 35-115 W TGP)",
            "mem_bw_bps": "8 GB GDDR6, 128-bit, 16 Gbps = 256 GB/s (NVIDIA spec)",
            "power": "active = 115 W TGP (top configuration; laptops ship 35-115 W); idle 8 W: estimate for an "
            "awake, unloaded laptop dGPU",
            "flops_efficiency": "estimate: achieved/peak for large prefill GEMMs on Ada",
            "per_layer_s": _EAGER + " (~10 us on a laptop CPU)",
            "install_s_per_byte": "estimate: host decode + pinned copy over PCIe 4.0 x8",
            "memory": "8 GB: 8B models at fp16 do not fit",
        },
    ),
    AnalyticDevice(
        name="h100-sxm",
        description="NVIDIA H100 SXM5 80 GB (HBM3), fp16/bf16 tensor cores",
        peak_flops=989.4e12,
        mem_bw_bps=3.35e12,
        active_w=700.0,
        idle_w=70.0,
        flops_efficiency=0.6,
        per_layer_s=1e-4,
        launch_s=3e-4,
        install_s_per_byte=1e-10,
        sources={
            "peak_flops": "NVIDIA H100 datasheet: 1979 TFLOPS fp16/bf16 tensor with sparsity, i.e. 989.4 dense",
            "mem_bw_bps": "NVIDIA H100 datasheet: 3.35 TB/s HBM3 (SXM)",
            "power": "active = 700 W max TDP (H100 datasheet, SXM); idle 70 W: estimate (typical nvidia-smi "
            "reading of an idle SXM H100)",
            "flops_efficiency": "estimate: achieved/peak for large prefill GEMMs on Hopper in PyTorch",
            "per_layer_s": _EAGER + " (~7 us on a server CPU)",
            "install_s_per_byte": "estimate: host decode + copy over PCIe 5.0",
            "memory": "80 GB HBM3",
        },
    ),
)


def analytic_profile(name: str) -> DeviceProfile:
    for device in ANALYTIC_DEVICES:
        if device.name == name:
            return device.profile()
    raise KeyError(f"no analytic device {name!r}; known: {[d.name for d in ANALYTIC_DEVICES]}")


def builtin_folder() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "profiles"


def write_builtin_profiles(folder: Path | None = None) -> list[Path]:
    """(Re)write the analytic profile files from `ANALYTIC_DEVICES`."""
    folder = folder or builtin_folder()
    return [d.profile().save(folder / f"{d.name}.json") for d in ANALYTIC_DEVICES]
