//! A real supervisor in a temp dir (`cutover supervise`), stopped on drop.
