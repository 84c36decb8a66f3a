// Device memory of the sim backend (tensor storage and kernel workspaces), kept by the SIMT emulator so that it
// can check it: every allocation has exactly the size asked for, with guard zones on both sides that are checked
// after every launch (an overrun is an error naming the kernel and the allocation), and starts filled with the
// poison word 0x7FFFFFFF (NaN as float, INT_MAX as int), so a kernel that reads output it never wrote shows.
// Without the keyword macros of simt.h, so that host code (csrc/core) can include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace simt {

void* device_alloc(size_t bytes, const char* what);  // 64-byte aligned; throws std::bad_alloc
void device_free(void* ptr) noexcept;
// A description for error messages (e.g. "float32 tensor (2, 3)"), replacing the one given at allocation.
void set_allocation_label(void* ptr, std::string label);
// The host filled the whole allocation with data (an upload): the uninitialised-read check leaves it alone, since
// data may hold the poison's bits (a NaN with that payload).
void mark_host_written(void* ptr);

// ---- graph capture (vgg::Graph on device sim, csrc/core/graph.cpp) ----------------------------------------------
// begin_capture: from now on this host thread's kernel launches (VGG_LAUNCH, simt.h) and the copies and memsets
// given to record_or_run are recorded instead of run, and a memory pool is open: every allocation made, and every
// block freed, until end_capture belongs to it and stays allocated (registered, checked) until release_pool, so
// that no later allocation outside the pool can be handed memory a replay still writes. A block of the pool that
// its owner freed, and that no other pool holds, is handed again to an allocation of the same size made while the
// pool is open (as the cuda pools reuse their blocks). Every allocation made while capturing records a step that
// fills it with the poison word again at that point of each replay (a replay finds no data in it from the last
// one, as on cuda, where its content is undefined), so the uninitialised-read check holds on every replay; a
// block the host filled (mark_host_written, a graph's per-replay values) is left alone. `share`: 0 opens a new
// pool; the id of another graph's pool opens that one again (its captures replay in capture order). One capture at
// a time (std::runtime_error).
uint64_t begin_capture(uint64_t share = 0);
// The recorded steps, in order; closes the pool (its blocks stay until release_pool). Safe without a capture.
std::vector<std::function<void()>> end_capture() noexcept;
bool capturing() noexcept;  // on this host thread
// Records `step` while capturing, runs it now otherwise.
void record_or_run(std::function<void()> step);
// The last graph of the pool is gone: frees the blocks their owners have freed and no other pool holds (a block
// freed during another pool's capture is held by both); the pool's live blocks become ordinary ones.
void release_pool(uint64_t pool) noexcept;

}  // namespace simt
