"""recordings and audit: search index, legal hold, crypto-shredding, audit anchors

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.add_column(sa.Column('legal_hold', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('index_key', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('indexed_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('recordings') as batch_op:
        batch_op.add_column(sa.Column('shredded_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('targets') as batch_op:
        batch_op.add_column(sa.Column('retention_days', sa.Integer(), nullable=True))
    op.create_table('search_entries',
                    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                    sa.Column('session_id', sa.String(length=36), nullable=False),
                    sa.Column('kind', sa.String(length=16), nullable=False),
                    sa.Column('offset', sa.Float(), nullable=False),
                    sa.Column('sealed', sa.LargeBinary(), nullable=False),
                    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('search_entries') as batch_op:
        batch_op.create_index(batch_op.f('ix_search_entries_session_id'), ['session_id'], unique=False)
    op.create_table('audit_anchors',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('seq', sa.BigInteger(), nullable=False),
                    sa.Column('hash', sa.String(length=64), nullable=False),
                    sa.Column('destination', sa.String(length=256), nullable=False),
                    sa.Column('anchored_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('id'))


def downgrade() -> None:
    op.drop_table('audit_anchors')
    op.drop_table('search_entries')
    with op.batch_alter_table('targets') as batch_op:
        batch_op.drop_column('retention_days')
    with op.batch_alter_table('recordings') as batch_op:
        batch_op.drop_column('shredded_at')
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.drop_column('indexed_at')
        batch_op.drop_column('index_key')
        batch_op.drop_column('legal_hold')
