"""Wrap ../shared/tools/regs_sm90.py (which predates sinks / soft-capping): add the sink and soft-cap kernel
arguments, VARIANT=base|sink|softcap|both, then run its main() with the given flags.

  VARIANT=sink TRITON_CACHE_DIR=$(mktemp -d) python regs_variants.py --d 64 128 --configs first --mask swa
"""
import os, sys, importlib.util
spec = importlib.util.spec_from_file_location("regs", os.path.join(os.path.dirname(__file__), "../../../../shared/tools/regs_sm90.py"))
regs = importlib.util.module_from_spec(spec); spec.loader.exec_module(regs)
v = os.environ.get("VARIANT", "base")
orig = regs.make_args
def make_args(d, mask, dtype=regs.torch.bfloat16):
    block_d, args = orig(d, mask, dtype)
    extra = dict(sink=4 if v in ("sink", "both") else 0, cap_in=0.1, cap_out=30.0,
                 HAS_SINK=v in ("sink", "both"), SINK_CAUSAL=True, SOFTCAP=v in ("softcap", "both"))
    for a in args.values():
        a.update(extra)
    return block_d, args
regs.make_args = make_args
sys.argv = [sys.argv[0]] + sys.argv[1:]
regs.main()
