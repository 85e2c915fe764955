"""publishing: blobs, datasets, files, grants, download requests, daily usage

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('blobs',
                    sa.Column('sha256', sa.String(length=64), nullable=False),
                    sa.Column('size', sa.BigInteger(), nullable=False),
                    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
                    sa.Column('created_at', TIME, nullable=False),
                    sa.PrimaryKeyConstraint('sha256'))
    op.create_table('datasets',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('description', sa.Text(), nullable=False),
                    sa.Column('classification', sa.String(length=16), nullable=False),
                    sa.Column('owner_id', sa.Integer(), nullable=True),
                    sa.Column('published', sa.Boolean(), nullable=False),
                    sa.Column('publish_from', TIME, nullable=True),
                    sa.Column('publish_until', TIME, nullable=True),
                    sa.Column('current_version', sa.Integer(), nullable=False),
                    sa.Column('created_at', TIME, nullable=False),
                    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='SET NULL'),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('name'))
    op.create_table('dataset_files',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('dataset_id', sa.Integer(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('path', sa.String(length=512), nullable=False),
                    sa.Column('size', sa.BigInteger(), nullable=False),
                    sa.Column('sha256', sa.String(length=64), nullable=False),
                    sa.Column('media_type', sa.String(length=128), nullable=False),
                    sa.Column('created_by', sa.String(length=128), nullable=False),
                    sa.Column('created_at', TIME, nullable=False),
                    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
                    sa.ForeignKeyConstraint(['sha256'], ['blobs.sha256']),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('dataset_id', 'version', 'path'))
    with op.batch_alter_table('dataset_files') as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_files_dataset_id'), ['dataset_id'], unique=False)
    op.create_table('dataset_grants',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('dataset_id', sa.Integer(), nullable=False),
                    sa.Column('subject_kind', sa.String(length=8), nullable=False),
                    sa.Column('subject', sa.String(length=64), nullable=False),
                    sa.Column('mode', sa.String(length=32), nullable=False),
                    sa.Column('valid_until', TIME, nullable=True),
                    sa.Column('max_downloads', sa.Integer(), nullable=True),
                    sa.Column('downloads', sa.Integer(), nullable=False),
                    sa.Column('min_level', sa.Integer(), nullable=True),
                    sa.Column('mask', sa.String(length=16), nullable=False),
                    sa.Column('watermark', sa.Boolean(), nullable=False),
                    sa.Column('revoked_at', TIME, nullable=True),
                    sa.Column('created_by', sa.String(length=128), nullable=False),
                    sa.Column('created_at', TIME, nullable=False),
                    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('dataset_grants') as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_grants_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_grants_subject'), ['subject'], unique=False)
    op.create_table('download_requests',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('grant_id', sa.Integer(), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('status', sa.String(length=16), nullable=False),
                    sa.Column('reason', sa.String(length=512), nullable=False),
                    sa.Column('decided_by', sa.String(length=128), nullable=False),
                    sa.Column('requested_at', TIME, nullable=False),
                    sa.Column('decided_at', TIME, nullable=True),
                    sa.Column('expires_at', TIME, nullable=True),
                    sa.ForeignKeyConstraint(['grant_id'], ['dataset_grants.id'], ondelete='CASCADE'),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('download_requests') as batch_op:
        batch_op.create_index(batch_op.f('ix_download_requests_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_requests_user_id'), ['user_id'], unique=False)
    op.create_table('daily_usage',
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('day', sa.String(length=10), nullable=False),
                    sa.Column('rows_viewed', sa.BigInteger(), nullable=False),
                    sa.Column('bytes_downloaded', sa.BigInteger(), nullable=False),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('user_id', 'day'))


def downgrade() -> None:
    for table in ('daily_usage', 'download_requests', 'dataset_grants', 'dataset_files', 'datasets', 'blobs'):
        op.drop_table(table)
