"""The simulated fleet's DCGM exposition carries the labels dcgm-exporter gives every GPU series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from catalogue.gpus import GPU_PROFILES
from simulator.fleet import dcgm


def samples(text: str) -> list[dict[str, str]]:
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples]


def test_every_series_carries_dcgm_exporters_device_labels_and_the_driver_version() -> None:
    readings = [
        dcgm.gpu_reading(0, "NVIDIA-H100-80GB-HBM3", {"draw_w": 350.0}, ("serving", "chat-0")),
        dcgm.gpu_reading(1, "NVIDIA-H100-80GB-HBM3", {}, None),
    ]
    rows = samples(dcgm.render("gpu-node-1", "NVIDIA-H100-80GB-HBM3", readings))
    assert len(rows) == len(dcgm.FAMILIES) * 2
    for labels in rows:
        assert {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"} <= set(labels)
        assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
        assert labels["device"] == f"nvidia{labels['gpu']}" and labels["Hostname"] == "gpu-node-1"
        assert labels["UUID"].startswith("GPU-") and len(labels["UUID"]) == len("GPU-") + 36
        assert labels["pci_bus_id"].startswith("00000000:") and labels["pci_bus_id"].endswith(":00.0")
    # Only a GPU a pod holds carries the pod attributes, as dcgm-exporter's Kubernetes mapping adds them.
    held = [r for r in rows if r["gpu"] == "0"]
    assert all(r["pod"] == "chat-0" and r["namespace"] == "serving" for r in held)
    assert not [r for r in rows if r["gpu"] == "1" and "pod" in r]
    assert len({r["UUID"] for r in rows}) == 2 and len({r["pci_bus_id"] for r in rows}) == 2


def test_model_name_is_nvmls_product_name_with_spaces_for_every_catalogued_gpu() -> None:
    for product, profile in GPU_PROFILES.items():
        name = dcgm.model_name(product)
        assert name == profile.nvml_name and " " in name
        # GPU feature discovery's node label is NVML's name with spaces turned into dashes.
        assert name.replace(" ", "-") == product


def test_renamed_hostname_label_replaces_the_old_one() -> None:
    reading = dcgm.gpu_reading(0, "NVIDIA-L4", {}, None)
    text = dcgm.render("n", "NVIDIA-L4", [reading], hostname_label=dcgm.HOSTNAME_LABEL_RENAMED)
    assert all(r["hostname"] == "n" and "Hostname" not in r for r in samples(text))


def test_framebuffer_used_and_free_add_up_to_the_gpus_memory() -> None:
    reading = dcgm.gpu_reading(0, "NVIDIA-A100-SXM4-40GB", {"memory_used_mib": 10_000.0}, ("a", "b"))
    assert reading.fb_used_mib + reading.fb_free_mib == GPU_PROFILES["NVIDIA-A100-SXM4-40GB"].memory_gb * 1024
