"""Selective-Stereo disparity, depth and point cloud for a rectified stereo camera.

    ros2 launch sgru_ros stereo.launch.py
    ros2 launch sgru_ros stereo.launch.py use_sample_source:=true use_rviz:=true
    ros2 launch sgru_ros stereo.launch.py namespace:=stereo model:=/path/sceneflow.pth iterations:=32 device:=cuda

Inputs (as stereo_image_proc): <namespace>/<left_namespace>/image_rect, .../camera_info and the same
for <right_namespace>. Outputs: <namespace>/disparity, points2, depth, disparity/color.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _camera_remappings():
    left, right = LaunchConfiguration('left_namespace'), LaunchConfiguration('right_namespace')
    return [
        ('left/image_rect', [left, '/image_rect']),
        ('left/camera_info', [left, '/camera_info']),
        ('right/image_rect', [right, '/image_rect']),
        ('right/camera_info', [right, '/camera_info']),
    ]


def generate_launch_description():
    share = get_package_share_directory('sgru_ros')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the stereo camera'),
        DeclareLaunchArgument('left_namespace', default_value='left',
                              description='Namespace of the left camera, relative to namespace'),
        DeclareLaunchArgument('right_namespace', default_value='right',
                              description='Namespace of the right camera, relative to namespace'),
        DeclareLaunchArgument('model', default_value='',
                              description='Checkpoint file (authors\' .pth or this package\'s); empty: bundled'),
        DeclareLaunchArgument('iterations', default_value='8', description='GRU iterations per frame'),
        DeclareLaunchArgument('device', default_value='auto', description='auto, cpu, cuda or cuda:N'),
        DeclareLaunchArgument('precision', default_value='fp32', description='fp32, fp16 (CUDA) or bf16'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'stereo.yaml'),
                              description='Parameter file of the stereo node'),
        DeclareLaunchArgument('use_sample_source', default_value='false',
                              description='Also start the sample source (Middlebury Motorcycle pair)'),
        DeclareLaunchArgument('use_rviz', default_value='false', description='Start rviz2 with config/stereo.rviz'),
    ]
    stereo_node = Node(
        package='sgru_ros',
        executable='stereo_node',
        name='sgru_stereo',
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model': ParameterValue(LaunchConfiguration('model'), value_type=str),
                'iterations': ParameterValue(LaunchConfiguration('iterations'), value_type=int),
                'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
                'precision': ParameterValue(LaunchConfiguration('precision'), value_type=str),
            },
        ],
        remappings=_camera_remappings(),
        output='screen',
    )
    sample_source = Node(
        package='sgru_ros',
        executable='sample_source',
        name='sample_source',
        namespace=LaunchConfiguration('namespace'),
        remappings=_camera_remappings(),
        condition=IfCondition(LaunchConfiguration('use_sample_source')),
        output='screen',
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', PathJoinSubstitution([share, 'config', 'stereo.rviz'])],
        condition=IfCondition(LaunchConfiguration('use_rviz')),
    )
    return LaunchDescription(arguments + [stereo_node, sample_source, rviz])
