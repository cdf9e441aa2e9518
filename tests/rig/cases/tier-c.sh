#!/bin/sh
# L1 case for tier C, one L1 session: the L2 boot comparison (QEMU and cvmm,
# both images), the Cocos guest case and the manager case. Needs --with-qemu,
# --add <cvmm>:/bin/cvmm and --add <manager_client>:/bin/manager_client.
rc=0
for c in compare-l2-boot cvmm-l2-cocos cvmm-manager; do
    sh "/lib/rig/cases/$c.sh" || rc=1
done
exit $rc
