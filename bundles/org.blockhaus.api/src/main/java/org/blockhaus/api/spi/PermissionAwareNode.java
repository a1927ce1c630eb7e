package org.blockhaus.api.spi;

import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;

/**
 * A node whose lock state follows the permissions its users need (QEMU's permission refresh):
 * the core opens a protocol node before it knows the format on top, then tells it the final
 * permissions. On a conflict the node keeps what it had and throws {@code LOCKED}.
 */
public interface PermissionAwareNode extends BlockNode {
    void updatePermissions(Set<Permission> permissions, Set<Permission> shared) throws BlockException;
}
