#!/usr/bin/env python3
"""Write the fuzzer's seed corpus (tests/fuzz/corpus/) from the table below.

SPDX-License-Identifier: MIT

Each seed is a byte string in fuzz-api.c's input format: byte 0 picks the
options (value % 3: auto, poll, epoll; bit 2: busy polling off), then
operations (opcode, argument[, deadline code]). Every callback the library
runs reads one byte: CB (0) does nothing, ACT (1) followed by an operation
makes the callback perform it. Usage: tests/fuzz/make-corpus.py [DIR]
"""
import os
import sys

(BH_NEW, SCHED, SCHED_IDLE, CANCEL, DELETE, ONESHOT, T_NEW, T_MOD, T_ANTIC,
 T_DEL, T_FREE, REG, UNREG, WRITE, DRAIN, N_SET, N_TEST, DISABLE, ENABLE,
 POLL, POLL2, NOTIFY, TIMEOUT, T_CHECK, INTEREST) = range(25)
CB, ACT = 0, 1
PAST, FUTURE = 0x00, 0x10   # deadline codes (| 0..15 for the offset)
IN = 0x20                   # T_MOD deadline code: spindle_timer_mod_in
EXT = 0x80                  # REG argument: external handler
ON, WRONG = 0x40, 0x80      # INTEREST argument: interest on; ask the other
                            # direction too (no callback: -EINVAL)
# fd slots for REG/UNREG: 0-3 pipe read ends, 4-7 write ends, 8-9 notifiers
AUTO, POLLB, EPOLL, NOPOLL = 0, 1, 2, 4


def ops(*xs):
    return bytes(xs)


SEEDS = {
    # bottom halves
    "bh-schedule-run": ops(AUTO, BH_NEW, 0, SCHED, 0, POLL, 0, CB, TIMEOUT, 0),
    "bh-fifo": ops(EPOLL, BH_NEW, 0, BH_NEW, 1, BH_NEW, 2, SCHED, 2, SCHED, 0,
                   SCHED, 1, POLL, 0, CB, CB, CB),
    "bh-cancel": ops(POLLB, BH_NEW, 0, BH_NEW, 1, SCHED, 0, SCHED, 1,
                     CANCEL, 0, POLL, 0, CB, POLL, 0),
    "bh-cancel-resched": ops(AUTO, BH_NEW, 0, BH_NEW, 1, SCHED, 0, SCHED, 1,
                             CANCEL, 0, SCHED, 0, POLL, 0, CB, CB),
    "bh-delete-pending": ops(EPOLL, BH_NEW, 0, SCHED, 0, DELETE, 0, POLL, 0,
                             BH_NEW, 0, SCHED, 0, POLL, 0, CB),
    "bh-self-resched": ops(AUTO, BH_NEW, 3, SCHED, 3, POLL, 0, ACT, SCHED, 3,
                           POLL, 0, CB, POLL, 0),
    "bh-self-delete": ops(POLLB, BH_NEW, 3, SCHED, 3, POLL, 0, ACT, DELETE, 3,
                          POLL, 0),
    "bh-delete-other": ops(AUTO, BH_NEW, 0, BH_NEW, 1, SCHED, 0, SCHED, 1,
                           POLL, 0, ACT, DELETE, 1, POLL, 0),
    "bh-idle": ops(AUTO, BH_NEW, 0, SCHED_IDLE, 0, TIMEOUT, 0, POLL, 0, CB,
                   TIMEOUT, 0),
    "bh-idle-promote": ops(EPOLL, BH_NEW, 0, SCHED_IDLE, 0, SCHED, 0,
                           TIMEOUT, 0, POLL, 0, CB),
    "bh-nested": ops(AUTO, BH_NEW, 0, BH_NEW, 1, BH_NEW, 2, SCHED, 0, SCHED, 1,
                     POLL, 0, ACT, SCHED, 2, ACT, POLL, 0, CB, CB, POLL, 0),
    "oneshots": ops(POLLB, ONESHOT, 0, BH_NEW, 0, SCHED, 0, ONESHOT, 0,
                    POLL, 0, CB, CB, CB, POLL, 0),
    "oneshot-nested": ops(AUTO, ONESHOT, 0, POLL, 0, ACT, ONESHOT, 0,
                          ACT, POLL, 0, CB, POLL, 0),
    # timers
    "timer-fire": ops(AUTO, T_NEW, 0, T_MOD, 0, PAST | 1, TIMEOUT, 0,
                      POLL, 0, CB, T_CHECK, 0),
    "timer-order": ops(EPOLL, T_NEW, 0, T_NEW, 1, T_NEW, 2, T_MOD, 0, PAST | 5,
                       T_MOD, 1, PAST | 2, T_MOD, 2, PAST | 5, POLL, 0,
                       CB, CB, CB),
    "timer-future": ops(AUTO, T_NEW, 0, T_MOD, 0, FUTURE | 3, TIMEOUT, 0,
                        POLL, 0, T_DEL, 0, TIMEOUT, 0),
    "timer-anticipate": ops(POLLB, T_NEW, 0, T_MOD, 0, FUTURE, T_ANTIC, 0,
                            PAST | 4, T_ANTIC, 0, PAST | 9, T_CHECK, 0,
                            POLL, 0, CB),
    "timer-rearm-self": ops(AUTO, T_NEW, 0, T_MOD, 0, PAST, POLL, 0,
                            ACT, T_MOD, 0, PAST, POLL, 0, CB),
    "timer-free-self": ops(EPOLL, T_NEW, 0, T_NEW, 1, T_MOD, 0, PAST,
                           T_MOD, 1, PAST | 1, POLL, 0, ACT, T_FREE, 0, CB),
    "timer-del-other": ops(AUTO, T_NEW, 0, T_NEW, 1, T_MOD, 0, PAST,
                           T_MOD, 1, PAST | 1, POLL, 0, ACT, T_DEL, 1, POLL, 0),
    "timer-nested": ops(AUTO, T_NEW, 0, T_NEW, 1, T_MOD, 0, PAST, POLL, 0,
                        ACT, T_MOD, 1, PAST, ACT, POLL, 0, CB),
    "timer-free-armed": ops(POLLB, T_NEW, 0, T_MOD, 0, FUTURE, T_FREE, 0,
                            T_NEW, 0, T_MOD, 0, PAST, POLL, 0, CB),
    "timer-mod-in": ops(AUTO, T_NEW, 0, T_NEW, 1, T_NEW, 2,
                        T_MOD, 0, IN | FUTURE | 2, T_MOD, 1, IN | PAST | 1,
                        T_MOD, 2, PAST | 3, TIMEOUT, 0, T_CHECK, 0,
                        POLL, 0, CB, ACT, T_MOD, 1, IN | PAST, CB,
                        POLL, 0, CB, TIMEOUT, 0),
    # handlers
    "pipe-read": ops(AUTO, REG, 0, WRITE, 0, POLL, 0, CB, DRAIN, 0, POLL, 0),
    "pipe-read-epoll": ops(EPOLL, REG, 1, WRITE, 1 | 8, POLL, 0, ACT, DRAIN, 1,
                           POLL, 0),
    "pipe-write": ops(POLLB, REG, 4, POLL, 0, CB, UNREG, 4, POLL, 0),
    "pipe-remove-other": ops(AUTO, REG, 0, REG, 1, WRITE, 0, WRITE, 1,
                             POLL, 0, ACT, UNREG, 1, ACT, UNREG, 0),
    "pipe-update": ops(EPOLL, REG, 2, WRITE, 2, POLL, 0, ACT, REG, 2, CB,
                       POLL, 0, CB, UNREG, 2),
    "pipe-external": ops(AUTO, REG, 0 | EXT, WRITE, 0, DISABLE, 0, POLL, 0,
                         ENABLE, 0, POLL, 0, CB),
    "pipe-external-nested": ops(POLLB, REG, 0 | EXT, REG, 1, WRITE, 0,
                                WRITE, 1, DISABLE, 0, DISABLE, 0, ENABLE, 0,
                                POLL, 0, CB, ENABLE, 0, POLL, 0, CB, CB),
    "pipe-disable-in-cb": ops(EPOLL, REG, 1, REG, 0 | EXT, WRITE, 0, WRITE, 1,
                              POLL, 0, ACT, DISABLE, 0, CB, ENABLE, 0),
    "notifier": ops(AUTO, REG, 8, N_SET, 0, N_SET, 0, POLL, 0, ACT, N_TEST, 0,
                    POLL, 0, N_TEST, 0),
    "notifier-external": ops(EPOLL, REG, 9 | EXT, N_SET, 1, DISABLE, 0,
                             POLL, 0, ENABLE, 0, POLL, 0, CB, N_TEST, 1,
                             UNREG, 9),
    "interest-read": ops(AUTO, REG, 0, WRITE, 0, INTEREST, 0, POLL, 0,
                         INTEREST, 0 | ON, POLL, 0, CB, DRAIN, 0),
    "interest-write-epoll": ops(EPOLL, REG, 4, REG, 0, WRITE, 0, POLL, 0,
                                ACT, INTEREST, 4, CB, POLL, 0, CB,
                                INTEREST, 4 | WRONG, INTEREST, 4 | ON,
                                POLL, 0, ACT, INTEREST, 4, CB),
    "interest-unregistered": ops(POLLB, INTEREST, 1, REG, 1, INTEREST, 1,
                                 UNREG, 1, INTEREST, 1 | ON, REG, 9,
                                 INTEREST, 9, N_SET, 1, POLL, 0, REG, 9,
                                 POLL, 0, CB),
    "notify-no-progress": ops(AUTO, NOTIFY, 0, POLL, 0, NOTIFY, 0, NOTIFY, 0,
                              POLL, 0),
    "handler-nested-poll": ops(AUTO, REG, 0, REG, 1, WRITE, 0, WRITE, 1,
                               BH_NEW, 0, SCHED, 0, POLL, 0, ACT, POLL, 0,
                               CB, CB, CB),
    "many-fds-auto": ops(AUTO, REG, 0, REG, 1, REG, 2, REG, 3, REG, 4, REG, 5,
                         REG, 8, REG, 9, WRITE, 0, WRITE, 3, N_SET, 1,
                         POLL, 0, CB, CB, CB, CB, CB, CB, CB, CB),
    "mixed": ops(NOPOLL | AUTO, BH_NEW, 0, T_NEW, 0, REG, 0, WRITE, 0,
                 SCHED, 0, T_MOD, 0, PAST, POLL, 0, ACT, SCHED, 0, CB,
                 ACT, T_MOD, 0, PAST | 2, POLL, 0, CB, CB, CB),
    "mixed-nopoll-epoll": ops(NOPOLL | EPOLL, ONESHOT, 0, T_NEW, 1,
                              T_MOD, 1, PAST, REG, 5, POLL, 0, ACT, POLL, 0,
                              CB, CB, CB, CB, CB),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
