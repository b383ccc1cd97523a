//! Stage-2 and EL2 stage-1 translation tables with break-before-make and page ownership.
