/* Intrusive doubly-linked lists that one thread may walk while others
 * insert and unlink.
 * SPDX-License-Identifier: MIT
 *
 * Writers (holding the list's lock) keep both links. Walkers follow only
 * `next`, with acquire loads that pair with the release store that publishes
 * a node, so a walker sees a node's fields fully written. An unlinked node
 * keeps its own `next`, so a walker standing on it carries on into the list;
 * that is why unlinked nodes may only be freed once no walker is left
 * (see lockcnt.h).
 */
#ifndef SPINDLE_LIST_H
#define SPINDLE_LIST_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct sp_link {
    _Atomic(struct sp_link *) next;
    struct sp_link *prev;
} sp_link;

#define sp_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* A list is a sentinel link; an empty list points at itself. */
static inline void sp_list_init(sp_link *head)
{
    atomic_init(&head->next, head);
    head->prev = head;
}

static inline sp_link *sp_list_first(sp_link *head)
{
    /* Pairs with the release store in sp_list_insert_head(). */
    return atomic_load_explicit(&head->next, memory_order_acquire);
}

static inline sp_link *sp_list_next(sp_link *node)
{
    return atomic_load_explicit(&node->next, memory_order_acquire);
}

/* Writers only. Fill the node before calling: the store below publishes it. */
static inline void sp_list_insert_head(sp_link *head, sp_link *node)
{
    sp_link *first = atomic_load_explicit(&head->next, memory_order_relaxed);
    atomic_store_explicit(&node->next, first, memory_order_relaxed);
    node->prev = head;
    first->prev = node;
    atomic_store_explicit(&head->next, node, memory_order_release);
}

/* Writers only. The node keeps its `next` for walkers standing on it. */
static inline void sp_list_unlink(sp_link *node)
{
    sp_link *next = atomic_load_explicit(&node->next, memory_order_relaxed);
    atomic_store_explicit(&node->prev->next, next, memory_order_release);
    next->prev = node->prev;
}

#endif
