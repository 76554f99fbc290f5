# Paged arrays of fixed-size records: the wheel's pool and the pending
# table's slab (compiled only; the pure twins grow Python lists the same way).
#
# Why pages: an array that grows by doubling has between 1x and 2x of what
# it uses allocated (a process's first 20,000 pending calls sat in 32,768
# slots: +64 % of bytes, docs/bench/timers.md).  Here page 0 doubles from a
# small first size up to one page, and every later growth adds one whole page
# that never moves: the slack is under one page at any size, growth copies
# nothing, and a record's address stays valid across growth (but page 0's
# records may move while page 0 is still growing).  Record i is at
# pages[i >> PG_SHIFT] + (i & PG_MASK); callers wrap that in a typed inline
# accessor.  Header-only: every function here is inlined where it is used.

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc


cdef enum:
    PG_SHIFT = 10               # log2 of PG_SIZE
    PG_SIZE = 1024              # records per page (32 KiB of wheel entries, 40 KiB of slots)
    PG_MASK = 1023              # PG_SIZE - 1
    PG_FIRST_DIR = 8            # first directory size (page pointers)


ctypedef struct PagedArray:
    char** pages                # directory: page p holds records p * PG_SIZE ...; NULL until needed
    Py_ssize_t npages           # pages allocated (page 0 may be smaller than PG_SIZE)
    Py_ssize_t dircap           # slots of the directory
    Py_ssize_t cap              # records in all pages


cdef inline int paged_grow(PagedArray* a, size_t size, Py_ssize_t first,
                           Py_ssize_t* blocks) except -1:
    # Room for more records: page 0 doubles (first, 2 x first, ... PG_SIZE),
    # then one more whole page.  On failure (MemoryError) nothing changed.
    # *blocks counts the PyMem blocks alive (directory + pages) for the
    # debug build's leak counters.
    cdef Py_ssize_t new
    cdef char** d
    cdef char* page
    if a.dircap == 0:
        d = <char**>PyMem_Malloc(PG_FIRST_DIR * sizeof(char*))
        if d == NULL:
            raise MemoryError()
        a.pages = d
        a.dircap = PG_FIRST_DIR
        blocks[0] += 1
    if a.cap < PG_SIZE:
        new = a.cap * 2 if a.cap else first
        if new > PG_SIZE:
            new = PG_SIZE
        page = <char*>PyMem_Realloc(a.pages[0] if a.npages else NULL, <size_t>new * size)
        if page == NULL:
            raise MemoryError()
        if a.npages == 0:
            a.npages = 1
            blocks[0] += 1
        a.pages[0] = page
        a.cap = new
        return 0
    if a.npages == a.dircap:
        d = <char**>PyMem_Realloc(a.pages, <size_t>a.dircap * 2 * sizeof(char*))
        if d == NULL:
            raise MemoryError()
        a.pages = d
        a.dircap *= 2
    page = <char*>PyMem_Malloc(<size_t>PG_SIZE * size)
    if page == NULL:
        raise MemoryError()
    a.pages[a.npages] = page
    a.npages += 1
    a.cap += PG_SIZE
    blocks[0] += 1
    return 0


cdef inline void paged_free(PagedArray* a, Py_ssize_t* blocks) noexcept:
    # Every page and the directory; the array is empty (and usable) again.
    cdef Py_ssize_t p
    for p in range(a.npages):
        PyMem_Free(a.pages[p])
    if a.pages != NULL:
        PyMem_Free(a.pages)
        blocks[0] -= a.npages + 1
    a.pages = NULL
    a.npages = 0
    a.dircap = 0
    a.cap = 0
