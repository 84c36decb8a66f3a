// Device memory of the sim backend (tensor storage and kernel workspaces), kept by the SIMT emulator so that it
// can check it: every allocation has exactly the size asked for, with guard zones on both sides that are checked
// after every launch (an overrun is an error naming the kernel and the allocation), and starts filled with the
// poison word 0x7FFFFFFF (NaN as float, INT_MAX as int), so a kernel that reads output it never wrote shows.
// Without the keyword macros of simt.h, so that host code (csrc/core) can include it.
#pragma once

#include <cstddef>
#include <string>

namespace simt {

void* device_alloc(size_t bytes, const char* what);  // 64-byte aligned; throws std::bad_alloc
void device_free(void* ptr) noexcept;
// A description for error messages (e.g. "float32 tensor (2, 3)"), replacing the one given at allocation.
void set_allocation_label(void* ptr, std::string label);
// The host filled the whole allocation with data (an upload): the uninitialised-read check leaves it alone, since
// data may hold the poison's bits (a NaN with that payload).
void mark_host_written(void* ptr);

}  // namespace simt
