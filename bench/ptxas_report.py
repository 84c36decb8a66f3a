"""ptxas's per-kernel registers, shared memory and spills, from a build log made with -Xptxas -v, as markdown.

    python bench/ptxas_report.py build.log > bench/results/ptxas.md

CMake passes -Xptxas -v to every CUDA kernel file, so `pip install -v .` (and .ci/run's build.log) carries the
report; this turns it into a table with demangled names. Used by bench/gpu_check.sh too.
"""
import re, shutil, subprocess, sys
text = open(sys.argv[1], errors="replace").read()
rows, entry = [], None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
    if m:
        entry = [m.group(1), m.group(2), "", "", ""]
        continue
    if entry is None:
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        entry[4] = f"{m.group(1)}/{m.group(2)}"
    m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
    if m:
        entry[2], entry[3] = m.group(1), m.group(2) or "0"
        rows.append(entry)
        entry = None
if not rows:
    print("(no ptxas report in the build log)")
    sys.exit(0)
names = [r[0] for r in rows]
if shutil.which("c++filt"):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) == len(names):
        names = out
print("| kernel | arch | registers | static smem bytes | spill stores/loads bytes |")
print("|:---|:---|---:|---:|---:|")
seen = set()
for (mangled, arch, regs, smem, spill), name in zip(rows, names):
    if (name, arch) in seen:
        continue
    seen.add((name, arch))
    short = name if len(name) <= 160 else name[:157] + "..."
    print(f"| `{short}` | {arch} | {regs} | {smem} | {spill or '0/0'} |")
