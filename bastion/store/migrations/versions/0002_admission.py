"""multi-level admission: device policies, devices, session device

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('device_policy', sa.String(length=16), nullable=True))
    with op.batch_alter_table('targets') as batch_op:
        batch_op.add_column(sa.Column('device_policy', sa.String(length=16), nullable=True))
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.add_column(sa.Column('device_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('device_proof', sa.String(length=16), nullable=False, server_default=''))
    op.create_table('group_policies',
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('device_policy', sa.String(length=16), nullable=True),
                    sa.PrimaryKeyConstraint('name'))
    op.create_table('devices',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('status', sa.String(length=16), nullable=False),
                    sa.Column('macs', sa.JSON(), nullable=False),
                    sa.Column('ssh_public_key', sa.Text(), nullable=False),
                    sa.Column('ssh_fingerprint', sa.String(length=128), nullable=False),
                    sa.Column('cert_fingerprint', sa.String(length=128), nullable=False),
                    sa.Column('cert_serial', sa.String(length=64), nullable=False),
                    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
                    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
                    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('user_id', 'name'))
    with op.batch_alter_table('devices') as batch_op:
        batch_op.create_index(batch_op.f('ix_devices_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_devices_ssh_fingerprint'), ['ssh_fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_devices_cert_fingerprint'), ['cert_fingerprint'], unique=False)


def downgrade() -> None:
    op.drop_table('devices')
    op.drop_table('group_policies')
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.drop_column('device_proof')
        batch_op.drop_column('device_id')
    with op.batch_alter_table('targets') as batch_op:
        batch_op.drop_column('device_policy')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('device_policy')
