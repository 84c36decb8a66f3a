// Page-locked host memory and asynchronous host-to-device copies on a copy stream of their own.
//
// A copy is a ticket: issued on the device's copy stream (after the work already queued on the compute stream, so
// the destination block, which the caching allocator may have just handed back, is no longer read by it), then
// ordered before the compute that reads the destination by wait_on_device (the compute stream waits on the copy's
// event; the host does not block). The pinned source block records the last ticket reading it: the host may write
// the block again only once that copy has completed (pinned_ready / pinned_wait).
//
// cpu: no copies (a cpu tensor is already where the compute runs). cuda: cudaHostAlloc'd blocks, cudaMemcpyAsync on
// the copy stream, one event per ticket. sim models the copy stream honestly instead of copying at once: the
// destination is poisoned (NaN) at issue and the copy is performed only when the compute stream waits on it, the
// host waits on it, or the device is synchronised, so compute that forgets the wait reads NaN. The source's
// contents are hashed at issue and checked when the copy is performed: a source written in between (a buffer
// handed back before its copy completed) is reported as an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor.h"

namespace vgg {

// Page-locked host memory: cudaHostAlloc when this build has CUDA and the machine a GPU, else plain page-aligned
// memory. pinned_free first waits for a queued copy that still reads the block.
void* pinned_alloc(size_t bytes);
void pinned_free(void* ptr) noexcept;
// Whether [ptr, ptr + bytes) lies inside one pinned block.
bool is_pinned(const void* ptr, size_t bytes);

// Starts copying `bytes` of pinned host memory at src into a new tensor on `device` (sim or cuda); returns the
// tensor and sets *ticket. ValueError naming `op` when src is not pinned or device is the cpu.
Tensor copy_to_device_async(const char* op, const void* src, size_t bytes, const std::vector<int64_t>& shape,
                            DType dtype, const Device& device, uint64_t* ticket);
// The device's compute stream waits for the copy `ticket` (and, on sim, for every copy issued before it).
void wait_on_device(uint64_t ticket);
// Has the copy completed (its source may be written again)? The host blocks in host_wait until it has.
bool copy_done(uint64_t ticket);
void host_wait(uint64_t ticket);
// The same for the last copy that reads the pinned block containing ptr (true / nothing to wait for when none).
bool pinned_ready(const void* ptr);
void pinned_wait(const void* ptr);
// Completes every copy queued for `device` (sim: performs them; cuda: the copy stream is synchronised).
void synchronize_copies(const Device& device);
// Copies issued and not yet known to be complete (for tests and diagnostics).
size_t pending_copies();

}  // namespace vgg
