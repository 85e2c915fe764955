"""download copies: one counted download covers each file of a dataset version once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('download_copies',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('grant_id', sa.Integer(), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('request_id', sa.Integer(), nullable=True),
                    sa.Column('opened_at', TIME, nullable=False),
                    sa.Column('expires_at', TIME, nullable=False),
                    sa.ForeignKeyConstraint(['grant_id'], ['dataset_grants.id'], ondelete='CASCADE'),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('download_copies') as batch_op:
        batch_op.create_index(batch_op.f('ix_download_copies_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_copies_user_id'), ['user_id'], unique=False)
    op.create_table('download_copy_files',
                    sa.Column('copy_id', sa.Integer(), nullable=False),
                    sa.Column('file_id', sa.Integer(), nullable=False),
                    sa.ForeignKeyConstraint(['copy_id'], ['download_copies.id'], ondelete='CASCADE'),
                    sa.ForeignKeyConstraint(['file_id'], ['dataset_files.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('copy_id', 'file_id'))
    with op.batch_alter_table('download_copy_files') as batch_op:
        batch_op.create_index(batch_op.f('ix_download_copy_files_file_id'), ['file_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('download_copy_files') as batch_op:
        batch_op.drop_index(batch_op.f('ix_download_copy_files_file_id'))
    op.drop_table('download_copy_files')
    with op.batch_alter_table('download_copies') as batch_op:
        batch_op.drop_index(batch_op.f('ix_download_copies_user_id'))
        batch_op.drop_index(batch_op.f('ix_download_copies_grant_id'))
    op.drop_table('download_copies')
