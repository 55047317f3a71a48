/* Fault injection, the test side: builds configured with
 * -Dfault_injection=true export these two functions (they are not part of
 * the public API and do not exist in normal builds).
 * SPDX-License-Identifier: MIT
 */
#ifndef SPINDLE_FAULT_HOOK_H
#define SPINDLE_FAULT_HOOK_H

#include "spindle.h"

enum spindle_fault_kind {
    SPINDLE_FAULT_ALLOC,     /* malloc, calloc, realloc: ENOMEM */
    SPINDLE_FAULT_FD,        /* eventfd, pipe2, epoll_create1: EMFILE */
    SPINDLE_FAULT_EPOLL_CTL, /* epoll_ctl: ENOMEM */
    SPINDLE_FAULT_IO_URING,  /* io_uring setup: the kernel lacks what the
                              * back-end needs (the context falls back) */
    SPINDLE_FAULT_KINDS
};

/* Make the nth operation of this kind from now on fail (1: the next one),
 * once; 0 disarms. Either way the kind's count restarts at 0. */
SPINDLE_API void spindle_fault_arm(enum spindle_fault_kind kind,
                                   unsigned long nth);
/* How many operations of this kind ran since the last arm, the failed one
 * included: a test that armed nth and sees fewer knows the scenario has no
 * nth failure point. */
SPINDLE_API unsigned long spindle_fault_seen(enum spindle_fault_kind kind);

#endif
