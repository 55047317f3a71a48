/* Fault injection, the library side: every allocation and fd creation goes
 * through these wrappers, so that a test build can make any one of them
 * fail (fault-hook.h). In normal builds they compile to the plain calls.
 * SPDX-License-Identifier: MIT
 */
#ifndef SPINDLE_FAULT_H
#define SPINDLE_FAULT_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "spindle-config.h"
#include "fault-hook.h"

#if SPINDLE_FAULT_INJECTION
bool sp_fault_fails(enum spindle_fault_kind kind);
#else
static inline bool sp_fault_fails(enum spindle_fault_kind kind)
{
    (void)kind;
    return false;
}
#endif

static inline void *sp_malloc(size_t size)
{
    if (sp_fault_fails(SPINDLE_FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return malloc(size);
}

static inline void *sp_calloc(size_t n, size_t size)
{
    if (sp_fault_fails(SPINDLE_FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return calloc(n, size);
}

static inline void *sp_realloc(void *p, size_t size)
{
    if (sp_fault_fails(SPINDLE_FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, size);
}

static inline void *sp_aligned_alloc(size_t align, size_t size)
{
    if (sp_fault_fails(SPINDLE_FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return aligned_alloc(align, size);
}

/* Call right before creating an fd: true (errno EMFILE) means "fail as if
 * the fd table were full". */
static inline bool sp_fault_fd(void)
{
    if (sp_fault_fails(SPINDLE_FAULT_FD)) {
        errno = EMFILE;
        return true;
    }
    return false;
}

#endif
