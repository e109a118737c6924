"""A real CUDA process for the GPU checks: allocates device memory, says what it got, and holds
it until its standard input closes.

    python cuda_child.py --mib 1024 [--mib 4096 ...] [--backend auto|torch|driver]

Each ``--mib`` is one more allocation on device 0, kept while the next is tried.  One JSON line
on stdout says ``pid``, ``backend``, the device and each allocation's result (``ok``, or the
``error`` and whether it was out-of-memory); then the process waits for EOF on stdin so the test
can look at it while it holds the memory.  ``torch`` is used where it is installed (``auto``),
else the CUDA driver API through ctypes (``cuMemAlloc`` on the primary context), which needs
nothing but the driver.  Plain device allocations only: never managed memory.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

MIB = 1024 * 1024
CUDA_ERROR_OUT_OF_MEMORY = 2


class DriverAPI:
    """The few CUDA driver calls needed, on device 0's primary context."""

    def __init__(self) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.check(self.cuda.cuInit(0), "cuInit")
        self.device = ctypes.c_int()
        self.check(self.cuda.cuDeviceGet(ctypes.byref(self.device), 0), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        self.check(
            self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device),
            "cuDevicePrimaryCtxRetain",
        )
        self.check(self.cuda.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        if self.cuda.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
        return f"CUDA error {code}"

    def check(self, code: int, call: str) -> None:
        if code:
            raise RuntimeError(f"{call}: {self.error_name(code)}")

    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.check(self.cuda.cuDeviceGetName(buf, 256, self.device), "cuDeviceGetName")
        return buf.value.decode()

    def allocate(self, nbytes: int) -> dict:
        pointer = ctypes.c_uint64()
        code = self.cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(nbytes))
        if code:
            return {
                "ok": False,
                "error": self.error_name(code),
                "out_of_memory": code == CUDA_ERROR_OUT_OF_MEMORY,
            }
        self.check(self.cuda.cuMemsetD8_v2(pointer, 1, ctypes.c_size_t(nbytes)), "cuMemsetD8")
        self.check(self.cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        return {"ok": True}


class TorchAPI:
    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.cuda.init()
        self.held: list = []

    def name(self) -> str:
        return self.torch.cuda.get_device_name(0)

    def allocate(self, nbytes: int) -> dict:
        torch = self.torch
        try:
            block = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
            block.fill_(1)
            torch.cuda.synchronize()
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            text = str(e).splitlines()[0][:300]
            return {"ok": False, "error": text, "out_of_memory": "out of memory" in str(e).lower()}
        self.held.append(block)
        return {"ok": True}


def open_backend(choice: str):
    if choice in ("auto", "torch"):
        try:
            return "torch", TorchAPI()
        except ImportError:
            if choice == "torch":
                raise
    return "driver", DriverAPI()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, action="append", required=True)
    parser.add_argument("--backend", choices=["auto", "torch", "driver"], default="auto")
    args = parser.parse_args(argv)
    doc: dict = {"pid": os.getpid(), "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        doc["backend"], api = open_backend(args.backend)
        doc["device"] = api.name()
        doc["allocations"] = [{"mib": mib, **api.allocate(mib * MIB)} for mib in args.mib]
    except Exception as e:  # noqa: BLE001 - said on stdout, the test reads it
        doc["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(doc), flush=True)
    if "error" in doc:
        return 3
    sys.stdin.read()  # hold the memory until the test closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
