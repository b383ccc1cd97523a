//! EL2 core: vectors, world switch, exits, VMs and vCPUs, hypercall ABIs.
