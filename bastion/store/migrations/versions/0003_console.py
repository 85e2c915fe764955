"""web console: console sessions, API tokens, browser approvals, session kill requests

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.add_column(sa.Column('kill_requested_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('kill_reason', sa.String(length=256), nullable=False, server_default=''))
    op.create_table('web_sessions',
                    sa.Column('id', sa.String(length=64), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('authenticated', sa.Boolean(), nullable=False),
                    sa.Column('methods', sa.JSON(), nullable=False),
                    sa.Column('required_level', sa.Integer(), nullable=False),
                    sa.Column('csrf_token', sa.String(length=64), nullable=False),
                    sa.Column('device_id', sa.Integer(), nullable=True),
                    sa.Column('device_proof', sa.String(length=16), nullable=False),
                    sa.Column('source_addr', sa.String(length=64), nullable=False),
                    sa.Column('challenge', sa.JSON(), nullable=True),
                    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('web_sessions') as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sessions_user_id'), ['user_id'], unique=False)
    op.create_table('api_tokens',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('token_hash', sa.String(length=64), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('scopes', sa.JSON(), nullable=False),
                    sa.Column('label', sa.String(length=128), nullable=False),
                    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
                    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('token_hash'))
    with op.batch_alter_table('api_tokens') as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)
    op.create_table('approvals',
                    sa.Column('id', sa.String(length=64), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('connection_id', sa.String(length=36), nullable=False),
                    sa.Column('target', sa.String(length=64), nullable=False),
                    sa.Column('level', sa.Integer(), nullable=False),
                    sa.Column('status', sa.String(length=16), nullable=False),
                    sa.Column('method', sa.String(length=32), nullable=False),
                    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('approvals') as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_table('approvals')
    op.drop_table('api_tokens')
    op.drop_table('web_sessions')
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.drop_column('kill_reason')
        batch_op.drop_column('kill_requested_at')
